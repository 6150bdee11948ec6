"""The loss registry: every name a trainer's `--loss=` accepts.

Every entry is a `Loss`: called as `loss(x, y)` it returns one value per image, `[B]`, lower is
better, 0 (or its documented floor) at `x == y`. Similarities enter as `1 - similarity`.

Training calls `loss(x, y)`, which may pool statistics over the batch as the authors do (Watson's
mean luminance). Evaluation calls `loss.per_image(x, y)`: each value is a function of its own image
pair only, the value `loss` gives that pair as a batch of one, so a test score does not change with
how the test set is batched or padded.

Losses with parameters (Watson's fitted tables, deep-network weights) load them with
`loss.params(channels)`. Trainers call that once, outside `jax.jit`, and pass the result in
(`loss(x, y, params=p, key=k)`), so large weights are arguments of the compiled step rather than
constants baked into it, and fitted parameters can be swapped in without recompiling.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from perceptual import deep, gradient, pixel, pretrained, structural, watson

LossFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Loss:
  """A registry entry.

  Attributes:
    name: the registry name.
    fn: `fn(x, y, *, params, key) -> [B]`; `params` is None for parameter-free losses and `key`
      is None when no randomness is wanted (evaluation).
    load_params: `channels -> params pytree`, or None for parameter-free losses.
    channels: the channel counts the loss accepts.
    uses_key: whether the loss uses a PRNG key while training (Watson's random grid shift).
    image_fn: `fn` with every batch statistic taken per image (see `per_image`), or None where
      `fn` already scores each image pair on its own.
  """

  name: str
  fn: LossFn
  load_params: Callable[[int], Any] | None = None
  channels: tuple[int, ...] = (1, 3)
  uses_key: bool = False
  image_fn: LossFn | None = None

  def params(self, channels: int) -> Any:
    """Default parameters for images with `channels` channels (None if parameter-free)."""
    if channels not in self.channels:
      raise ValueError(
        f"loss {self.name!r} takes images with {self.channels} channels, got {channels}."
      )
    return None if self.load_params is None else self.load_params(channels)

  def __call__(
    self, x: jax.Array, y: jax.Array, *, params: Any = None, key: jax.Array | None = None
  ) -> jax.Array:
    if params is None and self.load_params is not None:
      params = self.params(jnp.shape(x)[-1])
    return self.fn(x, y, params=params, key=key)

  def per_image(self, x: jax.Array, y: jax.Array, *, params: Any = None) -> jax.Array:
    """The evaluation form, `[B]`: each value a function of its own image pair only.

    `per_image(x, y)[i] == loss(x[i:i+1], y[i:i+1])[0]`: statistics that `loss` pools over the
    batch (Watson's mean luminance, `luminance="batch"`) are taken per image, and there is no
    key (no random grid shift). Trainers score their test splits with it, so every logged test
    metric is the same whatever the eval batch size and padding.
    """
    if params is None and self.load_params is not None:
      params = self.params(jnp.shape(x)[-1])
    return (self.image_fn or self.fn)(x, y, params=params, key=None)


def _plain(metric: Callable[[jax.Array, jax.Array], jax.Array]) -> LossFn:
  return lambda x, y, *, params, key: metric(x, y)


def _one_minus(similarity: Callable[[jax.Array, jax.Array], jax.Array]) -> LossFn:
  return lambda x, y, *, params, key: 1.0 - similarity(x, y)


def multi_distance(weights: Mapping[str, float], *, name: str | None = None) -> Loss:
  """The weighted multi-distance of Vertolli & Davies (2017), Eq. 6.

  `d(x, y) = sum_d beta_d d(x, y) / sum_d beta_d` over registry losses d.

  References:
    Vertolli & Davies, "Image Quality Assessment Techniques Improve Training and Evaluation of
    Energy-Based Generative Adversarial Networks", 2017.

  Args:
    weights: registry name -> beta_d >= 0, e.g. `{"l1": 1.0, "gmsm": 1.0, "chroma": 1.0}`.
    name: the name of the combined loss (default: built from the weights).

  Returns:
    A `Loss` whose params are a dict of the components' params.
  """
  unknown = sorted(set(weights) - set(LOSSES))
  if unknown:
    raise ValueError(f"unknown losses {unknown}; valid names are {sorted(LOSSES)}.")
  if any(beta < 0 for beta in weights.values()) or sum(weights.values()) <= 0:
    raise ValueError(f"weights must be >= 0 with a positive sum, got {dict(weights)}.")
  parts = {n: LOSSES[n] for n, beta in weights.items() if beta > 0}
  total = float(sum(weights.values()))

  def fn(x, y, *, params, key):
    keys = (
      dict(zip(parts, jax.random.split(key, len(parts)), strict=True)) if key is not None else {}
    )
    return sum(
      (weights[n] / total) * loss(x, y, params=params[n], key=keys.get(n))
      for n, loss in parts.items()
    )

  def image_fn(x, y, *, params, key):
    del key  # evaluation: no randomness
    return sum(
      (weights[n] / total) * loss.per_image(x, y, params=params[n]) for n, loss in parts.items()
    )

  def load_params(channels):
    return {n: loss.params(channels) for n, loss in parts.items()}

  channels = tuple(set.intersection(*(set(loss.channels) for loss in parts.values())))
  label = name or "+".join(f"{beta:g}*{n}" for n, beta in weights.items())
  return Loss(
    label,
    fn,
    load_params,
    tuple(sorted(channels)),
    any(loss.uses_key for loss in parts.values()),
    image_fn,
  )


def _ms_ssim_fitted(x: jax.Array, y: jax.Array) -> jax.Array:
  """MS-SSIM with as many of Wang's five scales as the image size allows (at least one).

  The standard 11-tap window needs 10 * 2^(M-1) + 1 pixels per side for M scales: 1 scale from 11
  px, 2 from 21, 3 from 41 (32-64 px images), 4 from 81, all 5 from 161. The first M of Wang's
  exponents are renormalised to sum to 1, so the value stays a weighted geometric mean.
  """
  size = min(jnp.shape(x)[1:3])
  scales = max(1, min(len(structural.WANG_WEIGHTS), 1 + int(math.log2(max(size - 1, 1) / 10))))
  weights = structural.WANG_WEIGHTS[:scales]
  return structural.ms_ssim(x, y, weights=tuple(w / sum(weights) for w in weights))


def _watson(kind: str) -> Loss:
  """Watson-DCT / DFT: batch-mean luminance in training (theirs), the image's own in per_image."""
  metric = watson.watson_dct if kind == "dct" else watson.watson_dft

  def fn(x, y, *, params, key, luminance="batch"):
    return metric(x, y, params=params, key=key, luminance=luminance)

  return Loss(
    f"watson_{kind}",
    fn,
    lambda channels: watson.watson_params(kind, channels=channels),
    uses_key=True,  # shifts the 8x8 block grid while training, as Czolbe et al. do
    image_fn=functools.partial(fn, luminance="image"),
  )


LOSSES: dict[str, Loss] = {
  "l1": Loss("l1", _plain(pixel.mae)),
  "l2": Loss("l2", _plain(pixel.mse)),
  "ssim": Loss("ssim", _one_minus(structural.ssim)),
  "ms_ssim": Loss("ms_ssim", _one_minus(_ms_ssim_fitted)),
  "gmsm": Loss("gmsm", _one_minus(gradient.gmsm)),
  "gmsd": Loss("gmsd", _plain(gradient.gmsd)),
  "chroma": Loss("chroma", _one_minus(gradient.chroma_similarity), channels=(3,)),
  "watson_dct": _watson("dct"),
  "watson_dft": _watson("dft"),
  # Deep-feature losses: the network weights are params, loaded once and passed in. Grey images
  # are repeated to RGB.
  "lpips_alex": Loss(
    "lpips_alex",
    lambda x, y, *, params, key: deep.lpips(x, y, net="alex", params=params),
    lambda channels: pretrained.lpips_params(net="alex"),
  ),
  "lpips_vgg": Loss(
    "lpips_vgg",
    lambda x, y, *, params, key: deep.lpips(x, y, net="vgg", params=params),
    lambda channels: pretrained.lpips_params(net="vgg"),
  ),
  "deepsim": Loss(
    "deepsim",
    lambda x, y, *, params, key: deep.deepsim_feature_loss(x, y, layer="conv5", params=params),
    lambda channels: pretrained.lpips_params(net="alex"),
  ),
}
