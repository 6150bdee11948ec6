"""Watson-DCT and Watson-DFT perceptual distances with their trained parameters.

Both functions take a reference `x` (the target: luminance and contrast masking are computed from
it) and a distorted image or reconstruction `y`, float `[B, H, W, C]` in `[0, 1]` with C = 1
(grey) or 3 (RGB, scored in YCbCr with one parameter set per channel and learned channel
weights), H and W multiples of 8, and return one distance per image, `[B]`. Not symmetric, and
d(x, x) is small but not 0 (the reference's EPS terms). With the default `luminance="batch"` the
distance of one image depends on the other images of its batch, as in the reference.

Parameters are pytrees of arrays in the stored parameterisation of the authors' code (get them
with `watson_params`; differentiate through them to fit): `t_tild` (T = exp), `alpha`, `w_tild`
(w = sigmoid), `beta`, DFT `w_phase_tild` (phase weights = exp), colour `w_tild` (3 channel logits,
weights = softmax) with per-channel sets under `ly`, `lcb`, `lcr`.

References:
  Czolbe, Krause, Cox, Igel, "A Loss Function for Generative Neural Networks Based on Watson's
  Perceptual Model", NeurIPS 2020. https://arxiv.org/abs/2006.15057,
  https://github.com/SteffenCzolbe/PerceptualSimilarity
"""

import functools
import importlib.resources
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from perceptual import batching, checks, filters
from perceptual.pixel import abs_sign_grad

EPS = 1e-10  # the reference's guard, kept wherever it changes values or gradients
# Scales of the stable Watson-DFT (see watson_dft), in DFT-coefficient units (pixel values / 64):
AMPLITUDE_FLOOR = 1e-6  # |A0 - A1| below which the beta < 1 power's derivative is made bounded,
AMPLITUDE_RESOLUTION = 2.0**-19  # or below this fraction of the block's |DC| (16 float32 ulps)
PHASE_GATE = 1e-4  # |coefficient| below which the phase term fades out
PHASE_FLOOR = 1e-6  # |coefficient| below which the angle's unit vector is not normalised further
WEIGHTS = ("paper_2019", "head_2020_12", "init")
_CHANNEL_SETS = ("ly", "lcb", "lcr")
# The reference's rounded YCbCr coefficients (not perceptual.color's exact ones): the trained
# chroma parameters and the reference values were produced with these.
_YCBCR = ((0.299, 0.587, 0.114), (-0.1687, -0.3313, 0.5), (0.5, -0.4187, -0.0813))
_DFT_REAL_BINS = (0, 4, 20, 24)  # bins (0,0), (0,4), (4,0), (4,4) of the flattened 8x5 table
# Watson's 8x8 DCT base detection thresholds, the reference's untrained T.
_WATSON_T = (
  (1.40, 1.01, 1.16, 1.66, 2.40, 3.43, 4.79, 6.56),
  (1.01, 1.45, 1.32, 1.52, 2.00, 2.71, 3.67, 4.93),
  (1.16, 1.32, 2.24, 2.59, 2.98, 3.64, 4.60, 5.88),
  (1.66, 1.52, 2.59, 3.77, 4.55, 5.30, 6.28, 7.60),
  (2.40, 2.00, 2.98, 4.55, 6.15, 7.46, 8.71, 10.17),
  (3.43, 2.71, 3.64, 5.30, 7.46, 9.62, 11.58, 13.51),
  (4.79, 3.67, 4.60, 6.28, 8.71, 11.58, 14.50, 17.29),
  (6.56, 4.93, 5.88, 7.60, 10.17, 13.51, 17.29, 21.15),
)
# atan(r) = r * P(r^2) on [0, 1]: least-squares fit at Chebyshev nodes, max error 9e-8 rad.
_ATAN_POLY = (
  0.9999999581953055, -0.33332302827710103, 0.19973681363449775, -0.1404013889120653,
  0.09967923618960106, -0.060219127990403284, 0.024756780690654238, -0.004831168387441236,
)  # fmt: skip


@functools.cache
def _stored_weights() -> dict:
  text = importlib.resources.files("perceptual").joinpath("data/watson_weights.json").read_text()
  return json.loads(text)


def _init_params(kind: str) -> dict:
  logit = lambda w: math.log(w / (1.0 - w))
  if kind == "dct":
    return dict(t_tild=np.log(_WATSON_T), alpha=0.649, w_tild=logit(0.7), beta=4.0)
  return dict(
    t_tild=np.zeros((8, 5)), alpha=0.1, w_tild=logit(0.2), beta=1.0,
    w_phase_tild=np.full((8, 5), -2.0),
  )  # fmt: skip


def watson_params(kind: str, *, channels: int, weights: str = "paper_2019") -> dict:
  """Parameters of Watson-DCT (`kind="dct"`) or Watson-DFT (`"dft"`) as a pytree of float32 arrays.

  The default, "paper_2019", is the set of the paper (2AFC scores, VAE figures), fitted on images
  in [0, 1], the range this package's losses take. "head_2020_12" (what the authors'
  `LossProvider(pretrained=True)` loads today) was fitted by code that mapped the data to
  [0.5, 1], i.e. for half the contrast and a different mean luminance. "init" is the untrained
  starting point of the reference (Watson's table for DCT, uniform for DFT).

  Args:
    kind: "dct" or "dft".
    channels: 1 (grey) or 3 (RGB).
    weights: "paper_2019", "head_2020_12" or "init".

  Returns:
    Grey: `{"t_tild": [8, 8] or [8, 5], "alpha": [], "w_tild": [], "beta": []}` plus DFT
    `"w_phase_tild": [8, 5]`. Colour: `{"w_tild": [3], "ly": grey set, "lcb": ..., "lcr": ...}`.
  """
  if kind not in ("dct", "dft"):
    raise ValueError(f'watson_params: kind must be "dct" or "dft", got {kind!r}.')
  if channels not in (1, 3):
    raise ValueError(f"watson_params: channels must be 1 (grey) or 3 (RGB), got {channels}.")
  if weights not in WEIGHTS:
    raise ValueError(f"watson_params: weights must be one of {WEIGHTS}, got {weights!r}.")
  if weights == "init":
    grey = _init_params(kind)
    tree = grey if channels == 1 else {"w_tild": np.zeros(3), **{s: grey for s in _CHANNEL_SETS}}
  else:
    name = f"{'gray' if channels == 1 else 'rgb'}_watson_{'fft' if kind == 'dft' else kind}_trial0"
    tree = {}
    for key, value in _stored_weights()[weights][name].items():
      *outer, leaf = key.split(".")  # "ly.t_tild" -> tree["ly"]["t_tild"]
      (tree.setdefault(outer[0], {}) if outer else tree)[leaf] = value
  as_leaf = lambda v: isinstance(v, list | float | np.ndarray)  # JSON lists are tables, not nodes
  return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), tree, is_leaf=as_leaf)


def _dct_basis() -> np.ndarray:
  """`[8, 8, 64]`: pixel (m, n) -> orthonormal DCT-II coefficient (u, v) at index 8 u + v."""
  i, n = np.arange(8)[:, None], np.arange(8)[None, :]
  a = np.sqrt(2 / 8) * np.cos((2 * n + 1) * i * np.pi / 16)
  a[0] /= np.sqrt(2)
  return np.einsum("um,vn->mnuv", a, a).reshape(8, 8, 64)


def _dft_bases() -> tuple[np.ndarray, np.ndarray]:
  """Two `[8, 8, 40]`: pixel (m, n) -> real, imaginary part of rfft2 / 64, bin (k, j) at 5 k + j."""
  m, n, k, j = np.meshgrid(*(np.arange(s) for s in (8, 8, 8, 5)), indexing="ij")
  angle = (2 * np.pi * (k * m + j * n) / 8).reshape(8, 8, 40)
  # Exact zeros (e.g. sin(pi) = 1.2e-16 -> 0) keep the four real bins exactly real.
  clean = lambda v: np.where(np.abs(v) < 1e-12, 0.0, v / 64)
  return clean(np.cos(angle)), clean(-np.sin(angle))


_DCT_BASIS, _DFT_BASES = _dct_basis(), _dft_bases()


def _blocks(z: jax.Array, *bases: np.ndarray) -> list[jax.Array]:
  """Planes `[B, C, H, W]` -> per 8x8 block coefficients `[B, C, K, F]` per basis `[8, 8, F]`."""
  b, c, h, w = z.shape
  z = z.reshape(b, c, h // 8, 8, w // 8, 8).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 64)
  # One [B C K, 64] x [64, F] GEMM per basis (forward and backward): several times faster on CPU
  # than jnp.fft or an einsum over the 6-D view. Separate GEMMs for real and imaginary parts: a
  # sliced output would make the backward pass one slow padded fusion. HIGHEST: no TF32 / bf16
  # passes on accelerators.
  return [
    jnp.dot(
      z, jnp.asarray(m.reshape(64, -1), z.dtype), precision=jax.lax.Precision.HIGHEST
    ).reshape(b, c, (h // 8) * (w // 8), m.shape[-1])
    for m in bases
  ]


def _thresholds(c0: jax.Array, lum: jax.Array, p: dict) -> jax.Array:
  """Watson's masked thresholds s `[B, C, K, F]` from the reference's coefficients (x only)."""
  col = lambda v: v[None, :, None, None]  # per-channel scalars against [B, C, K, F]
  # Powers written as exp / log (XLA's pow is several times slower on CPU). Luminance masking
  # T_l = T (c0_DC / lum) ** alpha is a per-bin table times a per-block factor: one exp per
  # block, not per coefficient (the exp / log chain is the largest part of the forward pass).
  log_t = p["t_tild"][None, :, None, :]
  log_masking = col(p["alpha"]) * (
    jnp.log(c0[..., :1] + EPS) - jnp.log(lum[:, :, None, None] + EPS)
  )
  t_l = jnp.exp(log_t) * jnp.exp(log_masking)
  w = col(jax.nn.sigmoid(p["w_tild"]))
  contrast = jnp.exp(w * jnp.log(abs_sign_grad(c0) + EPS) + (1 - w) * (log_t + log_masking))
  return t_l + (contrast - t_l) * jax.nn.sigmoid(contrast - t_l)  # softmax-weighted max


def _terms(a: jax.Array, s: jax.Array, beta: jax.Array, floor: jax.Array | None) -> jax.Array:
  """Per-coefficient Watson terms `(a / s + EPS) ** beta` for differences a >= 0.

  With a `floor`, their derivative is bounded below it (see `_log_with_bounded_slope`).
  """
  u = a * (1 / s) + EPS
  log_u = jnp.log(u) if floor is None else _log_with_bounded_slope(u, floor * (1 / s))
  return jnp.exp(beta * log_u)


@jax.custom_jvp
def _log_with_bounded_slope(u: jax.Array, u_floor: jax.Array) -> jax.Array:
  """`log(u)`, differentiated as `u / (u^2 + u_floor^2)` instead of `1 / u`.

  The same above the floor (1 % off at 10 floors), and 0 at u = 0: `u ** beta` (beta < 1), whose
  slope is unbounded at 0, gets a slope of at most ~`u_floor ** (beta - 1)`, and a difference at
  the level of rounding noise gets almost no gradient, whatever its sign. No extra transcendental.
  """
  del u_floor
  return jnp.log(u)


@_log_with_bounded_slope.defjvp
def _log_with_bounded_slope_jvp(primals, tangents):
  u, u_floor = primals
  u_floor = jax.lax.stop_gradient(u_floor)
  return jnp.log(u), tangents[0] * u / (u * u + u_floor * u_floor)


def _pool(d: jax.Array, beta: jax.Array, mask: jax.Array | None, per_block: bool) -> jax.Array:
  """Sums the terms `[B, C, K, F]` of each image and channel: `[B, C]`, beta-pooled; with
  `per_block`, of each block: `[B, C, K]`."""
  if mask is not None:
    d = d * mask
  if per_block:
    return jnp.sum(d + EPS, axis=3) ** (1 / beta[:, :, None])
  return jnp.sum(d + EPS, axis=(2, 3)) ** (1 / beta)


def _angle(dot: jax.Array, cross: jax.Array, norm: jax.Array) -> jax.Array:
  """atan2(cross, dot) in [0, pi] for cross >= 0 and norm = |z0| |z1|, without atan2 or acos,
  its derivative rounded off as the reference's acos guard (the bounded derivative's stand-in).

  Half-angle form: with cos = dot / norm and sin = cross / norm, t = sin / (1 + |cos|) =
  cross / (norm + |dot|) in [0, 1] is tan(theta / 2) for cos >= 0 and tan(pi / 2 - theta / 2)
  for cos < 0; one division, one polynomial, one select.
  """
  near = _guarded_half_angle(cross / (norm + jnp.abs(dot)))  # from the nearer of 0 and pi
  return jnp.where(dot < 0, np.pi - near, near)


_GUARD = 4.5e-4  # rad: the reference's acos guard (see `_guarded_angle`)


@jax.custom_jvp
def _guarded_half_angle(t: jax.Array) -> jax.Array:
  """2 atan(t) on [0, 1] (0 at t = 0, where the gates' derivatives multiply it), differentiated
  with a slope that falls linearly to 0 below the acos guard: a phase difference at the level of
  rounding noise gets almost no gradient, whatever its sign. A factor in the derivative, not a
  select in the value (which XLA differentiated as two branches)."""
  return 2 * t * _horner(_ATAN_POLY, t * t)


@_guarded_half_angle.defjvp
def _guarded_half_angle_jvp(primals, tangents):
  (t,), (dt,) = primals, tangents
  angle = _guarded_half_angle(t)
  slope = _horner(tuple(2 * (2 * k + 1) * c for k, c in enumerate(_ATAN_POLY)), t * t)
  return angle, slope * jnp.minimum(angle * (1 / _GUARD), 1) * dt


def _horner(coefficients: tuple[float, ...], u: jax.Array) -> jax.Array:
  result = coefficients[-1]
  for c in coefficients[-2::-1]:
    result = result * u + c
  return result


@jax.custom_jvp
def _atan01(t: jax.Array) -> jax.Array:
  """atan(t) on [0, 1] as t P(t^2) (`_ATAN_POLY`)."""
  return t * _horner(_ATAN_POLY, t * t)


@_atan01.defjvp
def _atan01_jvp(primals, tangents):
  # The derivative as its own polynomial, sum (2k + 1) c_k t^2k: reverse-mode through Horner's
  # rule made XLA recompute the primal chain in each of three backward fusions.
  (t,), (dt,) = primals, tangents
  slope = _horner(tuple((2 * k + 1) * c for k, c in enumerate(_ATAN_POLY)), t * t)
  return _atan01(t), slope * dt


@jax.custom_jvp
def _snap_rounding_noise(v: jax.Array, dc: jax.Array) -> jax.Array:
  """`v` with the block GEMMs' rounding noise set to the FFT's exact 0; derivative 1.

  An FFT returns exact zeros for a flat block, or a block flat along one axis; the block GEMMs
  return noise up to ~32 ulp of the block's mean instead (measured <= 3.5e-8 of |DC| in float32,
  3x below eps(dtype) |DC|). The reference's angle of a zero coefficient is 0 and the direction
  of its amplitude's derivative is (1, 1) / sqrt(2) (its EPS in both parts); a noise coefficient
  would give both an arbitrary direction, and float32 gradients unrelated to float64 ones. In
  float64 the noise is below the reference's EPS and this changes nothing.
  """
  noise = jnp.finfo(v.dtype).eps * jnp.abs(dc)
  return jnp.where(jnp.abs(v) <= noise, 0, v)


@_snap_rounding_noise.defjvp
def _snap_rounding_noise_jvp(primals, tangents):
  return _snap_rounding_noise(*primals), tangents[0]


def _phase_without_atan2(re0, im0, re1, im1) -> jax.Array:
  """The reference's per-bin phase distance (value only) of snapped coefficients."""
  re0, im0, re1, im1 = map(jax.lax.stop_gradient, (re0, im0, re1, im1))
  dre, dim = re1 - re0, im1 - im0  # exactly 0 where unchanged: no FMA-contracted cross residue
  cross = jnp.abs((re0 + EPS) * dim - im0 * dre)
  dot = (re0 + EPS) * (re1 + EPS) + im0 * im1
  return _guarded_angle(dot, cross)


def _guarded_angle(dot: jax.Array, cross: jax.Array) -> jax.Array:
  """The reference's phase distance `acos((1 - 1e-7) cos theta)` from the products of its vectors.

  theta = atan2(cross, dot) in [0, pi] is the angle between the reference's coefficient vectors
  `(re + EPS, im)`: the angle `atan2(im, re + EPS)` of a zero coefficient is 0, so a flat block of
  x against a textured one of y counts, as in the reference. Needs no norms (they are floored for
  the bounded derivative) and no atan2 or acos. The distance phi of theta from the nearer of 0 and
  pi is atan(min / max) of |cross| and |dot| or its complement; the acos guard is then
  `sqrt(phi^2 + 2e-7)` (within 1e-7 rad of the reference's formula: 4.5e-4 at phi = 0).
  """
  d, c = jnp.abs(dot), cross
  big = jnp.maximum(c, d)
  ratio = jnp.minimum(c, d) / jnp.where(big > 0, big, 1)
  near = _atan01(ratio)
  phi = jnp.sqrt(jnp.square(jnp.where(c > d, np.pi / 2 - near, near)) + 2e-7)
  return jnp.where(dot < 0, np.pi - phi, phi)


@jax.custom_jvp
def _value_with_derivative_of(value: jax.Array, surrogate: jax.Array) -> jax.Array:
  """`value`, differentiated as `surrogate` (a bounded stand-in where the value's derivative is
  unbounded); in a forward-only program the surrogate is dead code."""
  del surrogate
  return value


@_value_with_derivative_of.defjvp
def _value_with_derivative_of_jvp(primals, tangents):
  return primals[0], tangents[1]


def _phase_reference(re0, im0, re1, im1) -> jax.Array:
  """The reference's per-bin phase distance, `acos(cos(ph0 - ph1) * (1 - 1e-7))`."""
  delta = jnp.arctan2(im0, re0 + EPS) - jnp.arctan2(im1, re1 + EPS)
  return jnp.arccos(jnp.cos(delta) * (1 - 1e-7))


@jax.custom_vjp
def _stored_cotangent(v: jax.Array) -> jax.Array:
  """Identity whose cotangent XLA:CPU evaluates once into memory (see `filters.materialized`).

  The amplitude, floored norm, gate, cross and dot product of y's coefficients feed both the
  real and the imaginary part's gradient; without a stored cotangent XLA recomputed the whole
  backward chain (190 operations per coefficient) in each of the two, a quarter of the metric's
  time on CPU.
  """
  return v


_stored_cotangent.defvjp(
  lambda v: (v, None), lambda _, ct: (filters.materialized(lambda c: c * 1.0, ct),)
)


def _polar(re: jax.Array, im: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Amplitude (EPS in both parts, as the reference), its floored value for the angle, the gate."""
  q = (re + EPS) ** 2 + (im + EPS) ** 2
  amplitude = jnp.sqrt(q)
  # Fades the phase out below |z| ~ PHASE_GATE, where it is undefined or rounding noise and
  # d angle / dz ~ 1 / |z| unbounded.
  gate = q * q / (q * q + PHASE_GATE**4)
  # The angle's norm is floored at PHASE_FLOOR, where the gate is < 1e-8. Unfloored (an inverse
  # of up to 1e10 for a zero coefficient; first written as q * rsqrt(q), whose derivative is ~1e30
  # there) the backward pass multiplied quantities that overflow float32 before the gate's ~0
  # reached them, and XLA's vectorised CPU loops returned inf * 0 = NaN for whole blocks (MNIST's
  # black blocks against flat reconstructions).
  return amplitude, jnp.maximum(amplitude, PHASE_FLOOR), gate


def _prepare(x, y, params, key, kind, metric, luminance, dropout_key, dropout_rate, fitting):
  x, y = checks.as_image_pair(x, y, channels=(1, 3), metric=metric)
  checks.check_min_size(x, 8, metric=metric, hint="Pad or crop the images to at least 8x8.")
  if x.shape[1] % 8 or x.shape[2] % 8:
    raise ValueError(
      f"{metric} works on 8x8 blocks: H and W must be multiples of 8, got shape {x.shape}. "
      "Pad or crop the images to a multiple of 8 (e.g. x[:, :H // 8 * 8, :W // 8 * 8])."
    )
  if luminance not in ("batch", "image"):
    raise ValueError(f'{metric}: luminance must be "batch" or "image", got {luminance!r}.')
  if not 0 <= dropout_rate < 1:
    raise ValueError(f"{metric}: dropout_rate must be in [0, 1), got {dropout_rate}.")
  if dropout_key is not None and not fitting:
    raise ValueError(f"{metric}: dropout belongs to fitting; pass fitting=True with dropout_key.")
  channels = x.shape[-1]
  if params is None:
    params = watson_params(kind, channels=channels)
  sets = [params] if "t_tild" in params else [params.get(s, {}) for s in _CHANNEL_SETS]
  bins = (8, 8) if kind == "dct" else (8, 5)
  if len(sets) != channels or any(jnp.shape(s.get("t_tild")) != bins for s in sets):
    raise ValueError(
      f"{metric}: params do not fit {channels}-channel {kind.upper()} input. Use "
      f'watson_params("{kind}", channels={channels}) (grey sets hold t_tild {bins}; colour sets '
      "hold w_tild [3] and ly, lcb, lcr)."
    )
  # Stack the channel sets: one vectorised computation for Y, Cb, Cr.
  flat = lambda v: jnp.reshape(v, (-1,) if jnp.ndim(v) else ())
  p = {k: jnp.stack([flat(s[k]) for s in sets]).astype(x.dtype) for k in sets[0]}
  weights = jax.nn.softmax(params["w_tild"]) if channels == 3 else jnp.ones(1)
  if key is not None:  # random 8x8 grid shift in [-4, 3] px, the same for x and y
    b, h, w, c = x.shape
    sy, sx = jax.random.randint(key, (2,), 0, 8)
    pad = lambda z: jnp.pad(z, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="edge")
    crop = lambda z: jax.lax.dynamic_slice(pad(z), (0, sy, sx, 0), (b, h, w, c))
    x, y = crop(x), crop(y)
  return x, y, p, weights


def _ycbcr(z: jax.Array, axis: int = -1) -> jax.Array:
  """RGB `[..., 3]` -> the reference's YCbCr, channels stacked on `axis`; grey unchanged."""
  if z.shape[-1] == 1:
    return jnp.moveaxis(z, -1, axis)
  return jnp.stack(
    [
      r[0] * z[..., 0] + r[1] * z[..., 1] + r[2] * z[..., 2] + o
      for r, o in zip(_YCBCR, (0, 0.5, 0.5), strict=True)
    ],
    axis=axis,
  )


def _planes(z: jax.Array) -> jax.Array:
  """`[B, H, W, C]` -> YCbCr planes `[B, C, H, W]`, on the whole batch before the chunks.

  Planes make the chunks' block transpose a shuffle of 8-pixel rows; with interleaved channels it
  was a strided copy of single values. Converting inside the chunks fused the conversion with
  that copy (10 ms of a 128-image colour call instead of the 5 ms saved).
  """
  return _ycbcr(z, axis=1)


def _dropout(key, rate, x, bins):
  """The reference's nn.Dropout while fitting: keep with probability 1 - rate, rescale."""
  if key is None or rate == 0:
    return None
  b, c, h, w = x.shape
  keep = jax.random.bernoulli(key, 1 - rate, (b, c, h * w // 64, bins))
  return keep.astype(x.dtype) / (1 - rate)


def _luminance(x: jax.Array, kind: str, luminance: str) -> jax.Array:
  """Mean DC coefficient (DFT: DC amplitude) of x's YCbCr blocks, `[B, C]`, per image or batch.

  Takes x before the colour conversion: a block's mean is linear in its pixels, so the block means
  of the RGB input are converted (64x less data than converting x again: the whole-batch YCbCr of
  x fed this reduction as a second full-size pass).
  """
  b, h, w, c = x.shape
  # Rows, then columns, each a reduction over one axis: one reduction over both axes of the 6-D
  # view goes to a YNNPACK fusion on CPU (jaxlib 0.10) that took 7.6 ms for 128 colour 64x64
  # images instead of 2.4 (reading them once).
  rows = jnp.sum(x.reshape(b, h // 8, 8, w * c), axis=2)
  means = _ycbcr(jnp.sum(rows.reshape(b, h // 8, w // 8, 8, c), axis=3) * (1 / 64))
  dc = 8 * means if kind == "dct" else jnp.sqrt((means + EPS) ** 2 + EPS**2)
  lum = jnp.mean(dc, axis=(1, 2))
  return jnp.broadcast_to(jnp.mean(lum, axis=0), lum.shape) if luminance == "batch" else lum


def _dct(x, y, lum, mask, *, p, per_block=False):
  """Watson-DCT per image and channel, `[B, C]` (`per_block`: per block, `[B, C, K]`)."""
  # T(x - y) for C0 - C1: exactly 0 where y == x (two GEMMs may round differently, and a 1-ulp
  # difference would give a large gradient at y == x through the beta < 1 power).
  (c0,), (diff,) = _blocks(x, _DCT_BASIS), _blocks(x - y, _DCT_BASIS)
  beta = p["beta"][None, :, None, None]
  d = _terms(abs_sign_grad(diff), _thresholds(c0, lum, p), beta, None)
  return _pool(d, p["beta"][None], mask, per_block)


def _dft(x, y, lum, amp_mask, phase_mask, *, p, w_phase, stable, per_block=False):
  """Watson-DFT per image and channel, `[B, C]` (`per_block`: per block, `[B, C, K]`)."""
  (re0, im0), (dre, dim) = _blocks(x, *_DFT_BASES), _blocks(y - x, *_DFT_BASES)
  re1, im1 = re0 + dre, im0 + dim
  if stable:
    dc0, dc1 = jax.lax.stop_gradient(re0[..., :1]), jax.lax.stop_gradient(re1[..., :1])
    re0, im0 = _snap_rounding_noise(re0, dc0), _snap_rounding_noise(im0, dc0)
    re1, im1 = _snap_rounding_noise(re1, dc1), _snap_rounding_noise(im1, dc1)
  beta = p["beta"][None, :, None, None]
  w_phase = w_phase[None, :, None, :]
  # Every x-y comparison is exactly 0 where a coefficient is unchanged (dre = dim = 0), whatever
  # the rounding of each fusion (XLA may contract a * b + c into an FMA in one and not another):
  # a 1-ulp difference would give a large gradient at y == x through the beta < 1 power.
  a0, norm0, gate0 = _polar(re0, im0)
  a1, norm1, gate1 = map(_stored_cotangent, _polar(re1, im1))
  unchanged = (dre == 0) & (dim == 0)
  diff = jnp.where(unchanged, 0, a1 - a0)
  floor = None
  if stable:  # amplitude differences below the resolution of the block's float32 coefficients
    floor = jnp.maximum(AMPLITUDE_FLOOR, AMPLITUDE_RESOLUTION * jnp.abs(dc0))
  d = _terms(abs_sign_grad(diff), _thresholds(a0, lum, p), beta, floor)
  if stable:
    cross = abs_sign_grad((re0 + EPS) * dim - im0 * dre)  # (re0 + EPS, im0) x (re1 + EPS, im1)
    dot = (re0 + EPS) * (re1 + EPS) + im0 * im1
    cross, dot = _stored_cotangent(cross), _stored_cotangent(dot)
    bounded = _angle(dot, cross, norm0 * norm1) * gate0 * gate1
    angle = _value_with_derivative_of(_phase_without_atan2(re0, im0, re1, im1), bounded) * w_phase
  else:
    angle = (
      jnp.where(
        unchanged, _phase_reference(re0, im0, re0, im0), _phase_reference(re0, im0, re1, im1)
      )
      * w_phase
    )
  if phase_mask is not None:
    angle = angle * phase_mask
  phase = jnp.sum(angle, axis=3 if per_block else (2, 3))
  return _pool(d, p["beta"][None], amp_mask, per_block) + phase


def watson_dct(
  x: jax.Array,
  y: jax.Array,
  *,
  params: dict | None = None,
  key: jax.Array | None = None,
  luminance: str = "batch",
  fitting: bool = False,
  dropout_key: jax.Array | None = None,
  dropout_rate: float = 0.5,
  per_block: bool = False,
) -> jax.Array:
  """Watson-DCT distance: masked 8x8 block-DCT differences, beta-pooled per image.

  Args:
    x: reference images `[B, H, W, C]` in `[0, 1]`, C = 1 or 3, H and W multiples of 8.
    y: distorted images, same shape.
    params: `watson_params("dct", channels=C, ...)`; None loads the default ("paper_2019").
    key: if given, shifts the 8x8 block grid by a random offset in [-4, 3] px (edge-replicated),
      the same for x and y, as the authors did while training VAEs; None scores the fixed grid.
    luminance: "batch" (reference: the mean DC over the whole batch) or "image" (per image, so
      that the distance of one image does not depend on the rest of its batch).
    fitting: the reference's trainable mode (for `jax.grad` w.r.t. params); enables dropout.
    dropout_key: with `fitting=True`, drops per-coefficient terms at `dropout_rate` (the
      authors fitted with 0.5); None gives the deterministic (eval-mode) distance.
    dropout_rate: probability of dropping a term; kept ones are scaled by 1 / (1 - rate).
    per_block: return the map of the blocks' distances, `[B, H / 8, W / 8]`: each block's terms
      beta-pooled on their own (the distance of that block alone, with the luminance masking of
      the whole image or batch), channel-weighted. The distance pools the same terms over all
      blocks: `watson_dct = (sum of map^beta)^(1 / beta)` for grey images (up to the EPS terms).

  Returns:
    `[B]` distances, >= 0 (with `per_block`, `[B, H / 8, W / 8]`).
  """
  _check_per_block(per_block, key, "watson_dct")
  x, y, p, weights = _prepare(
    x, y, params, key, "dct", "watson_dct", luminance, dropout_key, dropout_rate, fitting
  )
  blocks = (x.shape[0], x.shape[1] // 8, x.shape[2] // 8)
  lum = _luminance(x, "dct", luminance)
  x, y = _planes(x), _planes(y)
  mask = _dropout(dropout_key, dropout_rate, x, 64)

  def per_image(images, shared):
    (x, y, lum, mask), (p, weights) = images, shared
    d = _dct(x, y, lum, mask, p=p, per_block=per_block)
    return _channel_weighted(d, weights)

  d = batching.map_batch(per_image, (x, y, lum, mask), shared=(p, weights))
  return d.reshape(blocks) if per_block else d


def _check_per_block(per_block: bool, key, metric: str) -> None:
  if per_block and key is not None:
    raise ValueError(f"{metric}: per_block maps the fixed 8x8 grid; pass key=None with it.")


def _channel_weighted(d: jax.Array, weights: jax.Array) -> jax.Array:
  """`[B, C]` (or per block `[B, C, K]`) -> the channel-weighted sum, `[B]` (`[B, K]`)."""
  return jnp.einsum("bc...,c->b...", d, weights.astype(d.dtype))


def watson_dft(
  x: jax.Array,
  y: jax.Array,
  *,
  params: dict | None = None,
  key: jax.Array | None = None,
  luminance: str = "batch",
  formulation: str = "stable",
  fitting: bool = False,
  dropout_key: jax.Array | None = None,
  dropout_rate: float = 0.5,
  per_block: bool = False,
) -> jax.Array:
  """Watson-DFT distance: Watson-DCT's model on 8x8 block-DFT amplitudes plus a phase term.

  The phase term (not beta-pooled) sums `exp(w_phase_tild)` times the angle between the
  coefficients of x and y over blocks and bins. With fixed weights the four purely real bins get
  phase weight 0, as in the reference; `fitting=True` keeps all 40 (its trainable mode).

  Both formulations return the authors' values; they differ in the derivative.
  `formulation="reference"` computes exactly what the authors' code does: the phase as
  `acos(cos(atan2(im0, re0 + EPS) - atan2(im1, re1 + EPS)) * (1 - 1e-7))` and the amplitude
  terms as `(|A0 - A1| / s + EPS) ** beta` with beta ~ 0.6, differentiated as written. Both
  derivatives grow without bound where a coefficient, or a difference, is rounding noise (flat,
  clipped or JPEG-quantised blocks): 1 / |z| (up to ~1e10) for the phase, `EPS ** (beta - 1)` for
  the amplitudes; their size and sign then depend on the float precision.

  `formulation="stable"` (the default, what trainers use) returns the reference's values,
  including its conventions that the angle of a zero coefficient is 0 and that the acos guard
  puts 4.5e-4 rad on an unchanged bin, and differentiates bounded stand-ins instead (custom JVPs):
  - phase: the angle between the coefficients, rounded off within the acos guard, faded
    out by `g(|z0|) g(|z1|)`, `g(r) = r^4 / (r^4 + PHASE_GATE^4)` (1e-4, about one 8-bit grey
    level in one pixel). A flat block of x against a textured block of y counts in the value,
    but its phase term pushes no gradient into y.
  - amplitudes: `(u + EPS) ** beta`, u = |A0 - A1| / s, is differentiated with
    `d log u = du u / (u^2 + floor^2)`, floor = `max(AMPLITUDE_FLOOR, AMPLITUDE_RESOLUTION |DC|)
    / s` (1e-6 in coefficient units, or 2^-19 of the block's DC coefficient: 16 float32 ulps):
    exact well above the floor, bounded, and 0 for an unchanged coefficient.
  In float32 the block transforms leave rounding noise (below 4e-8 of the block's mean) where an
  FFT gives exact zeros; the default sets it back to 0 (values and derivative directions), while
  the reference formulation takes its arbitrary angles, as the authors' code does for its own
  rounding noise (their float32 and float64 values differ by up to 2 % on such pairs).
  Neither formulation uses atan2 or acos on the default path (slow in XLA on CPU).

  Measured against the authors' computation in float64 (an independent PyTorch transcription
  of their code and `formulation="reference"` agree to 1e-7), on scikit-image photographs at
  64 and 192 px, grey and RGB, distorted by JPEG at quality 10 and 30, blur, noise, contrast and
  clipping: the default's values are within 1e-4 relative in float64 and 1e-3 in float32, per
  image and per batch; its float32 and float64 gradients agree to a median relative L2 error of
  3e-4 (at most 2e-2) per image.

  Args:
    x: reference images `[B, H, W, C]` in `[0, 1]`, C = 1 or 3, H and W multiples of 8.
    y: distorted images, same shape.
    params: `watson_params("dft", channels=C, ...)`; None loads the default ("paper_2019").
    key: if given, shifts the 8x8 block grid by a random offset in [-4, 3] px (edge-replicated),
      the same for x and y, as the authors did while training VAEs; None scores the fixed grid.
    luminance: "batch" (reference: the mean DC amplitude over the whole batch) or "image".
    formulation: "stable" (default) or "reference", see above.
    fitting: the reference's trainable mode (for `jax.grad` w.r.t. params): all phase weights
      used, dropout enabled.
    dropout_key: with `fitting=True`, drops per-coefficient terms (amplitude and phase, with
      independent masks) at `dropout_rate`; None gives the deterministic distance.
    dropout_rate: probability of dropping a term; kept ones are scaled by 1 / (1 - rate).
    per_block: return the map of the blocks' distances, `[B, H / 8, W / 8]`: each block's
      amplitude terms beta-pooled on their own plus its phase terms (the distance of that block
      alone, with the luminance masking of the whole image or batch), channel-weighted.

  Returns:
    `[B]` distances, >= 0 (with `per_block`, `[B, H / 8, W / 8]`).
  """
  _check_per_block(per_block, key, "watson_dft")
  if formulation not in ("stable", "reference"):
    raise ValueError(
      f'watson_dft: formulation must be "stable" or "reference", got {formulation!r}.'
    )
  x, y, p, weights = _prepare(
    x, y, params, key, "dft", "watson_dft", luminance, dropout_key, dropout_rate, fitting
  )
  w_phase = jnp.exp(p["w_phase_tild"])
  if not fitting:
    w_phase = w_phase.at[:, _DFT_REAL_BINS].set(0)
  lum = _luminance(x, "dft", luminance)
  x, y = _planes(x), _planes(y)
  keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
  masks = tuple(_dropout(k, dropout_rate, x, 40) for k in keys)

  blocks = (x.shape[0], x.shape[2] // 8, x.shape[3] // 8)  # x: planes [B, C, H, W]

  def per_image(images, shared):
    (x, y, lum, masks), (p, w_phase, weights) = images, shared
    stable = formulation == "stable"
    d = _dft(x, y, lum, *masks, p=p, w_phase=w_phase, stable=stable, per_block=per_block)
    return _channel_weighted(d, weights)

  d = batching.map_batch(per_image, (x, y, lum, masks), shared=(p, w_phase, weights))
  return d.reshape(blocks) if per_block else d
