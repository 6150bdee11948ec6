"""What a DeePSiM run writes about its generator: normalised inversion errors, re-encoding,
interpolation, grids.

The normalised error of Dosovitskiy & Brox (2016a, Table 2) divides the mean distance between an
input and its reconstruction by the mean distance between distinct test inputs, so 1 means "as
far off as a random other test image"; it is computed in image space and in feature space (the
features that were inverted; for the VAE, the comparator's features).

References:
  A. Dosovitskiy and T. Brox, "Inverting Visual Representations with Convolutional Networks",
  CVPR 2016 (https://arxiv.org/abs/1506.02753), Table 2.
  A. Dosovitskiy and T. Brox, "Generating Images with Perceptual Similarity Metrics based on Deep
  Networks", NeurIPS 2016 (https://arxiv.org/abs/1602.02644).
"""

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models import deepsim as models
from perceptual import deep
from train import images

CHUNK = 16  # batch of every jitted evaluation call (padded), so each compiles once


def normalised_error(a: np.ndarray, b: np.ndarray) -> float:
  """`mean_i ||a_i - b_i|| / mean_{i != j} ||a_i - a_j||` (Euclidean norms over all but axis 0).

  Args:
    a: references `[N, ...]` (test images or their features), N >= 2, not all equal.
    b: reconstructions, same shape.

  Returns:
    The normalised error, >= 0 (0: perfect; about 1: no better than another test sample).
  """
  a = np.asarray(a, np.float64).reshape(len(a), -1)
  b = np.asarray(b, np.float64).reshape(len(b), -1)
  if a.shape != b.shape or len(a) < 2:
    raise ValueError(
      f"normalised_error needs two same-shape batches of >= 2 samples, got {a.shape} and "
      f"{b.shape}; pass at least two test samples and their reconstructions."
    )
  squared = np.sum(a**2, axis=1)
  gram = squared[:, None] + squared[None, :] - 2 * a @ a.T
  pairwise = np.sqrt(np.maximum(gram, 0.0))
  n = len(a)
  spread = (pairwise.sum() - np.trace(pairwise)) / (n * (n - 1))
  if spread == 0:
    raise ValueError("normalised_error: all references are equal; use distinct test samples.")
  return float(np.mean(np.linalg.norm(a - b, axis=1)) / spread)


def codecs(networks, state, consts, config) -> tuple[Callable, Callable, Callable]:
  """Jitted `encode(x) -> code`, `decode(code) -> image`, `features(x) -> evaluated features`.

  Inversion: the code is the fixed AlexNet's `input_layer` features; VAE: the encoder's mu.
  `features` is the space of the feature error: the inverted layer, or the comparator's layer.
  """
  gen, _, enc = networks
  g_params = jax.device_get(state.g_params)
  if config.task == "vae":
    encode = jax.jit(lambda x: enc.apply(g_params["encoder"], x)[0])

    def features(x):
      f = deep.alexnet_features(consts["comparator"], x, layers=(config.comparator_layer,))
      return f[config.comparator_layer]

  else:
    encode = jax.jit(
      lambda x: models.input_features(consts["alexnet"], x, layer=config.input_layer)
    )
    features = encode
  return encode, jax.jit(lambda z: gen.apply(g_params["generator"], z)), jax.jit(features)


def batched(fn: Callable, x: np.ndarray, *, size: int = CHUNK) -> np.ndarray:
  """`fn` over `x` in chunks of `size` rows, the last one padded: one compiled shape for all."""
  out = []
  for start in range(0, len(x), size):
    part = np.asarray(x[start : start + size])
    padded = np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])
    out.append(np.asarray(fn(padded))[: len(part)])
  return np.concatenate(out)


def reencode(encode: Callable, decode: Callable, x: jax.Array, *, rounds: int) -> np.ndarray:
  """`x, G(E(x)), G(E(G(E(x)))), ...`: `[rounds + 1, B, H, W, C]` (decodes clipped to [0, 1])."""
  out = [np.asarray(x)]
  for _ in range(rounds):
    out.append(np.clip(batched(decode, batched(encode, out[-1])), 0.0, 1.0))
  return np.stack(out)


def interpolate(a: jax.Array, b: jax.Array, *, steps: int) -> jax.Array:
  """Linear paths between codes `a`, `b` `[B, ...]`: `[B * steps, ...]`, row-major per pair."""
  t = jnp.linspace(0.0, 1.0, steps).reshape(1, steps, *([1] * (a.ndim - 1)))
  return (a[:, None] * (1 - t) + b[:, None] * t).reshape(-1, *a.shape[1:])


def evaluate(networks, state, consts, test, config, *, limit: int = 256) -> dict[str, float]:
  """Normalised image/feature errors of the first `limit` test images, and after re-encoding."""
  encode, decode, features = codecs(networks, state, consts, config)
  x = test.gather(np.arange(min(limit, len(test))))["image"]
  _, recon, again = reencode(encode, decode, x, rounds=2)
  return {
    "image_error": normalised_error(x, recon),
    "feature_error": normalised_error(batched(features, x), batched(features, recon)),
    "image_error_reencoded": normalised_error(x, again),
    "num_images": len(x),
  }


def save_pictures(networks, state, consts, test, config) -> dict[str, str]:
  """reconstructions.png, reencoding.png, interpolations.png (and samples.png for the VAE)."""
  encode, decode, _ = codecs(networks, state, consts, config)
  path = lambda name: os.path.join(config.workdir, name)  # noqa: E731
  x = test.gather(np.linspace(0, len(test) - 1, 16).astype(int))["image"]
  chain = reencode(encode, decode, x[:8], rounds=5)  # rows: images; columns: rounds
  codes = batched(encode, x)
  paths = {
    "reconstructions": images.save_grid(
      path("reconstructions.png"),
      images.side_by_side(x, reencode(encode, decode, x, rounds=1)[1], columns=8),
      columns=8,
      scale=2,
    ),
    "reencoding": images.save_grid(
      path("reencoding.png"), chain.transpose(1, 0, 2, 3, 4).reshape(-1, *x.shape[1:]), columns=6
    ),
    "interpolations": images.save_grid(
      path("interpolations.png"),
      np.clip(batched(decode, interpolate(codes[:4], codes[4:8], steps=8)), 0.0, 1.0),
      columns=8,
    ),
  }
  if config.task == "vae":
    z = jax.random.normal(jax.random.key(config.seed), (32, config.latent))
    samples = np.clip(batched(decode, z), 0.0, 1.0)
    paths["samples"] = images.save_grid(path("samples.png"), samples, columns=8, scale=2)
  return paths


def report(networks, state, consts, test, config) -> dict[str, Any]:
  """Pictures plus one line of normalised errors appended to `evaluation.jsonl`."""
  paths = save_pictures(networks, state, consts, test, config)
  values = {
    "step": int(jax.device_get(state.step)),
    **evaluate(networks, state, consts, test, config),
  }
  with open(os.path.join(config.workdir, "evaluation.jsonl"), "a") as f:
    f.write(json.dumps(values) + "\n")
  return {"pictures": paths, **values}
