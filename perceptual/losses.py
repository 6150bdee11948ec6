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
constants baked into it, and fitted parameters can be swapped in without recompiling. Called
eagerly without `params`, a loss loads its defaults; traced (under `jit`, `grad`, `vmap`) it
refuses to, rather than bake megabytes of weights into the program unasked.

Each entry states once its name, the channel counts it takes, the parameters it loads and, with
`fit`, how `train.calibrate` fits them to 2AFC judgements. `LOSSES` is read-only; combine entries
with `multi_distance`.
"""

import dataclasses
import functools
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from perceptual import deep, gradient, pixel, pretrained, structural, watson

LossFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fit:
  """How `train.calibrate` fits a loss's parameters to 2AFC judgements.

  Attributes:
    distance: `(x, y, params, consts, *, key=None, rate=0.0) -> [B]`; a key turns on the fitting
      mode (dropout at `rate`, Watson's batch-mean luminance as the authors fit it), without one
      it is the evaluation form (`Loss.per_image`): each value a function of its own pair only.
    initial: `(init, channels) -> params`, the fitted pytree's starting values.
    inits: the names `initial` accepts.
    consts: `channels -> pytree` of fixed inputs (a pretrained trunk), or None.
    project: applied to the params after every update (constraints such as w >= 0).
    saved: params -> the pytree written to fitted_params.json, in the layout `Loss.params`
      uses (so a trainer's `--loss_params` loads it).
  """

  distance: Callable[..., jax.Array]
  initial: Callable[[str, int], Any]
  inits: tuple[str, ...]
  consts: Callable[[int], Any] = lambda channels: None
  project: Callable[[Any], Any] = lambda params: params
  saved: Callable[[Any], Any] = lambda params: params


@dataclasses.dataclass(frozen=True, kw_only=True)
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
    fit: how its parameters are fitted to 2AFC judgements, or None.
  """

  name: str
  fn: LossFn
  load_params: Callable[[int], Any] | None = None
  channels: tuple[int, ...] = (1, 3)
  uses_key: bool = False
  image_fn: LossFn | None = None
  fit: Fit | None = None

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
    return self.fn(x, y, params=self._default_params(params, x, y), key=key)

  def per_image(self, x: jax.Array, y: jax.Array, *, params: Any = None) -> jax.Array:
    """The evaluation form, `[B]`: each value a function of its own image pair only.

    `per_image(x, y)[i] == loss(x[i:i+1], y[i:i+1])[0]`: statistics that `loss` pools over the
    batch (Watson's mean luminance, `luminance="batch"`) are taken per image, and there is no
    key (no random grid shift). Trainers score their test splits with it, so every logged test
    metric is the same whatever the eval batch size and padding.
    """
    return (self.image_fn or self.fn)(x, y, params=self._default_params(params, x, y), key=None)

  def _default_params(self, params: Any, x: jax.Array, y: jax.Array) -> Any:
    if params is not None or self.load_params is None:
      return params
    if isinstance(x, jax.core.Tracer) or isinstance(y, jax.core.Tracer):
      raise ValueError(
        f"loss {self.name!r} was called without params inside a traced function (jit, grad, "
        "vmap): its default parameters would be loaded and baked into the program as constants. "
        f"Load them once outside: `params = LOSSES[{self.name!r}].params(channels)`, and pass "
        "`params=params` in."
      )
    return self.params(jnp.shape(x)[-1])


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
    name=label,
    fn=fn,
    load_params=load_params,
    channels=tuple(sorted(channels)),
    uses_key=any(loss.uses_key for loss in parts.values()),
    image_fn=image_fn,
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

  def fit_distance(x, y, params, consts, *, key=None, rate=0.0):
    del consts
    if key is None:
      return metric(x, y, params=params, luminance="image")
    return metric(x, y, params=params, fitting=True, dropout_key=key, dropout_rate=rate)

  return Loss(
    name=f"watson_{kind}",
    fn=fn,
    load_params=lambda channels: watson.watson_params(kind, channels=channels),
    uses_key=True,  # shifts the 8x8 block grid while training, as Czolbe et al. do
    image_fn=functools.partial(fn, luminance="image"),
    fit=Fit(
      distance=fit_distance,
      initial=lambda init, channels: watson.watson_params(kind, channels=channels, weights=init),
      inits=watson.WEIGHTS,
    ),
  )


def _lpips(net: str) -> Loss:
  """LPIPS: a pretrained trunk and fitted non-negative per-channel heads (Zhang et al.)."""

  def fit_distance(x, y, heads, backbone, *, key=None, rate=0.0):
    params = {"backbone": backbone, "heads": heads}
    rate = rate if key is not None else 0.0
    return deep.lpips(x, y, net=net, params=params, dropout_key=key, dropout_rate=rate)

  def initial(init, channels):
    del channels  # grey images are repeated to RGB
    heads = pretrained.lpips_params(net=net)["heads"]
    return heads if init == "pretrained" else jax.tree.map(jnp.ones_like, heads)

  return Loss(
    name=f"lpips_{net}",
    fn=lambda x, y, *, params, key: deep.lpips(x, y, net=net, params=params),
    load_params=lambda channels: pretrained.lpips_params(net=net),
    fit=Fit(
      distance=fit_distance,
      initial=initial,
      inits=("init", "pretrained"),
      consts=lambda channels: pretrained.lpips_params(net=net)["backbone"],
      project=lambda heads: jax.tree.map(lambda w: jnp.maximum(w, 0.0), heads),
      saved=lambda heads: {"heads": heads},
    ),
  )


def _ms_ssim_snell(x: jax.Array, y: jax.Array) -> jax.Array:
  """MS-SSIM as Snell et al. train SRCNN on 33 px crops: 3 scales (33 -> 17 -> 9 px), 7-tap
  Gaussian windows (sigma 1.5) with "VALID" filtering (needs 25 px), equal exponents 1/3."""
  return structural.ms_ssim(x, y, filter_size=7, filter_sigma=1.5, weights=(1 / 3,) * 3)


def _registry(*losses: Loss) -> Mapping[str, Loss]:
  """Read-only name -> entry, each name taken from its entry."""
  return types.MappingProxyType({loss.name: loss for loss in losses})


LOSSES: Mapping[str, Loss] = _registry(
  Loss(name="l1", fn=_plain(pixel.mae)),
  Loss(name="l2", fn=_plain(pixel.mse)),
  Loss(name="ssim", fn=_one_minus(structural.ssim)),
  Loss(name="ms_ssim", fn=_one_minus(_ms_ssim_fitted)),
  Loss(name="ms_ssim_snell", fn=_one_minus(_ms_ssim_snell)),
  Loss(name="gmsm", fn=_one_minus(gradient.gmsm)),
  Loss(name="gmsd", fn=_plain(gradient.gmsd)),
  Loss(name="chroma", fn=_one_minus(gradient.chroma_similarity), channels=(3,)),
  _watson("dct"),
  _watson("dft"),
  # Deep-feature losses: the network weights are params, loaded once and passed in. Grey images
  # are repeated to RGB.
  _lpips("alex"),
  _lpips("vgg"),
  Loss(
    name="deepsim",
    fn=lambda x, y, *, params, key: deep.deepsim_feature_loss(x, y, layer="conv5", params=params),
    load_params=lambda channels: pretrained.lpips_params(net="alex"),
  ),
)
