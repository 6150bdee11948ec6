"""Pieces shared by the models."""

from collections.abc import Callable

import jax
import jax.numpy as jnp


def output_bias(mean: tuple[float, ...] | None, channels: int) -> Callable:
  """Bias initializer of an image-output layer: per-channel `mean` (zeros for None).

  The papers' networks work on centred images (Caffe's mean-subtracted inputs, BEGAN's [-1, 1]),
  so their untrained generators output the mean image. On images in [0, 1] a zero bias starts
  them black instead, and Adam moves a bias by at most about its learning rate per step (2e-4
  for DeePSiM: a DeePSiM-VAE still output images 0.17 too dark after 400 steps). Starting the
  bias at the training images' mean restores the papers' starting point.
  """
  if mean is None:
    return jax.nn.initializers.zeros
  if len(mean) != channels:
    raise ValueError(
      f"output mean has {len(mean)} values for {channels} channels; pass one per channel."
    )
  return lambda key, shape, dtype=jnp.float32: jnp.asarray(mean, dtype).reshape(shape)
