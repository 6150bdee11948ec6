"""Gradient-magnitude similarity (GMS, GMSM, GMSD) and the YIQ chrominance similarity.

All functions take a reference `x` and a distorted image `y`, float `[B, H, W, C]` in
`[0, max_val]`, and return similarities (1 for identical images) or, for `gmsd`, a deviation
(0 for identical images): one value per image, `[B]`, except `gms_map`, which returns the map.
Half-precision inputs are computed in float32. Together `gmsm` and `chroma_similarity` are the
two terms of the colour quality score that Vertolli & Davies use to train BEGAN.

GMS follows piq's `gmsd` (v0.8.0) exactly, so `gmsd` matches `piq.gmsd(x, y, data_range=max_val,
reduction='none')`: luma (Y of NTSC YIQ, `rgb_to_yiq`, same coefficients as piq) for RGB, grey
used as is; 2x2 mean pooling after zero-padding an odd height or width by one row/column at the
bottom/right (piq's `F.pad` + `avg_pool2d`, so a trailing half block is averaged with zeros);
Prewitt kernels `[1, 1, 1]^T [-1, 0, 1] / 3` applied as cross-correlations with one pixel of zero
padding (piq's `conv2d(padding=1)`, output the size of its input); magnitude
`m = sqrt(gx^2 + gy^2)`; map `(2 m_x m_y + c) / (m_x^2 + m_y^2 + c)` with `c = 170/255^2` for
`[0, 1]` data (images are divided by `max_val`, which is the same as scaling `c` by `max_val^2`).
Internally `1 - map` is computed as `(m_x - m_y)^2 / (m_x^2 + m_y^2 + c)` (algebraically equal,
exactly 0 where the magnitudes agree, no cancellation near 0). Everything is written as shifted
slices, strided pair sums and matrix-vector means, the forms XLA:CPU runs fastest (see the
helpers); the Prewitt filter is separable, a 3-tap box sum times a central difference.

Square roots at zero: the magnitude of a flat region and the deviation of identical images are
`sqrt(0)`, whose derivative is infinite (NaN after the chain rule multiplies it by 0). Both use
`_sqrt_zero_grad`, whose derivative at exactly 0 is 0 and whose values are unchanged: 0 is a
subgradient of the magnitude (a norm, like |x| at 0) and the exact derivative of the deviation
at x == y (the map departs from 1 only to second order in y - x).

References:
  Xue, Zhang, Mou, Bovik, "Gradient Magnitude Similarity Deviation: A Highly Efficient
  Perceptual Image Quality Index", IEEE TIP 23(2), 2014. https://arxiv.org/abs/1308.3052
  Vertolli, Davies, "Image Quality Assessment Techniques Improve Training and Evaluation of
  Energy-Based Generative Adversarial Networks", 2017. https://arxiv.org/abs/1708.02237
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from perceptual import checks, color, masks

# GMSD's T = 170 for 8-bit images, expressed for [0, 1] data (piq's default `t`).
GMS_C = 170.0 / 255.0**2
# Vertolli & Davies' chrominance constant (numerically 170/255^2 rounded, i.e. the same T).
CHROMA_C = 0.0026
# The 3x3 Prewitt window must fit inside the (downsampled) luma at least once.
_MIN_MAP_SIZE = 3


@jax.custom_jvp
def _sqrt_zero_grad(v: jax.Array) -> jax.Array:
  """sqrt(v) for v >= 0 whose derivative at exactly 0 is 0 instead of +inf."""
  return jnp.sqrt(v)


@_sqrt_zero_grad.defjvp
def _sqrt_zero_grad_jvp(primals, tangents):
  (v,), (dv,) = primals, tangents
  root = jnp.sqrt(v)
  positive = root > 0
  # Dividing by a dummy 1 where root == 0 keeps the unused branch of the where finite, so its
  # (masked) cotangent cannot turn into NaN in reverse mode.
  return root, jnp.where(positive, dv / (2.0 * jnp.where(positive, root, 1.0)), 0.0)


@functools.cache
def _yiq_matrix() -> np.ndarray:
  """`M[c, k]`: weight of RGB channel c in YIQ channel k, read off `color.rgb_to_yiq`."""
  with jax.ensure_compile_time_eval():
    return np.asarray(color.rgb_to_yiq(np.eye(3, dtype=np.float32)), np.float64)


def _yiq_planes(rgb: jax.Array, channels: tuple[int, ...], scale: float) -> list[jax.Array]:
  """The YIQ `channels` of `[B, H, W, 3]` as `[B, H, W]` planes, times `scale`.

  Same coefficients and summation order as `color.rgb_to_yiq`, but on a channel-first copy:
  XLA:CPU fuses stride-3 channel reads badly into the pooling and reduction loops downstream
  (several times slower on 64x64 batches), while the transpose itself is a fast copy.
  """
  r, g, b = jnp.moveaxis(rgb, -1, 0)
  m = _yiq_matrix() * scale
  return [m[0, k] * r + m[1, k] * g + m[2, k] * b for k in channels]


def _luma(x: jax.Array, max_val: float) -> jax.Array:
  """`[B, H, W, C]` -> `[B, H, W]` luma in `[0, 1]` (Y of YIQ for RGB, grey as is)."""
  if x.shape[-1] == 3:
    return _yiq_planes(x, (0,), 1.0 / max_val)[0]
  return x[..., 0] * (1.0 / max_val)


def _downsample(x: jax.Array) -> jax.Array:
  """piq's 2x2 average pooling of `[B, H, W]`: odd sides get one trailing row/column of zeros.

  Written as two strided pair sums: XLA:CPU runs a reshape + mean over the window axes as an
  unvectorised reduction, several times slower here.
  """
  _, h, w = x.shape
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2)))
  rows = x[:, 0::2] + x[:, 1::2]
  return (rows[:, :, 0::2] + rows[:, :, 1::2]) * 0.25


def _luma_image(x: jax.Array, max_val: float, downsample: bool) -> jax.Array:
  """`[B, H, W, C]` -> the (pooled) `[0, 1]` luma that GMS filters, `[B, H', W']`."""
  if x.shape[-1] == 1:  # autodiff is as fast here: no channel transpose to undo
    luma = _luma(x, max_val)
    return _downsample(luma) if downsample else luma
  return _luma_image_vjp(x, (float(max_val), downsample, x.shape[1], x.shape[2], x.shape[3]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _luma_image_vjp(x: jax.Array, static: tuple) -> jax.Array:
  max_val, downsample = static[:2]
  luma = _luma(x, max_val)
  return _downsample(luma) if downsample else luma


def _luma_image_fwd(x, static):
  return _luma_image_vjp(x, static), None


def _luma_image_bwd(static, _, ct):
  # The map is linear; its transpose written directly (repeat each pooled cotangent over its
  # 2x2 block, then weight the channels) writes the NHWC cotangent in one loop, where autodiff
  # emits pads, a channel-first transpose and a copy back (~30% of the colour step on CPU).
  max_val, downsample, h, w, channels = static
  ct = ct * (1.0 / max_val)
  if downsample:
    b, h2, w2 = ct.shape
    ct = jnp.broadcast_to((ct * 0.25)[:, :, None, :, None], (b, h2, 2, w2, 2))
    ct = ct.reshape(b, 2 * h2, 2 * w2)[:, :h, :w]
  del channels  # always 3: grey images take the autodiff path
  return (ct[..., None] * _yiq_matrix()[:, 0].astype(np.float32),)


_luma_image_vjp.defvjp(_luma_image_fwd, _luma_image_bwd)


def _gradient_magnitude(x: jax.Array) -> jax.Array:
  """Prewitt gradient magnitude of `[B, H, W]` with zero 'same' padding, as piq's gradient_map.

  The kernel `[[-1, 0, 1]] * 3 / 3` is the outer product of a 3-tap box sum (across the
  derivative) and a central difference; each factor is two adds on shifted slices.
  """
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1)))
  rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]  # [B, H, W + 2]: vertical box sums
  cols = p[:, :, :-2] + p[:, :, 1:-1] + p[:, :, 2:]  # [B, H + 2, W]: horizontal box sums
  gx = (rows[:, :, 2:] - rows[:, :, :-2]) * (1.0 / 3.0)
  gy = (cols[:, 2:] - cols[:, :-2]) * (1.0 / 3.0)
  return _sqrt_zero_grad(gx * gx + gy * gy)


def _spatial_mean(m: jax.Array) -> jax.Array:
  """Mean of `[B, H, W(, 1)]` over everything but the batch axis, `[B]`.

  A matrix-vector product rather than `jnp.mean`: XLA:CPU fuses a mean into the elementwise
  map that produces its input and runs the pair about 4x slower than the map plus a matvec.
  """
  flat = m.reshape(m.shape[0], -1)
  weights = jnp.full((flat.shape[1],), 1.0 / flat.shape[1], flat.dtype)
  return jnp.dot(flat, weights, precision=jax.lax.Precision.HIGHEST)


def _dissimilarity(a: jax.Array, b: jax.Array, c: float) -> jax.Array:
  """`1 - (2ab + c) / (a^2 + b^2 + c)`, computed as `(a - b)^2 / (a^2 + b^2 + c)`.

  The same quantity as the papers' similarity, without its cancellation: it is exactly 0 where
  a == b (whatever rounding the compiler picks for the products), and tiny differences that
  `1 - s` would round away in float32 keep their size, so `gmsd` of nearly identical images and
  the losses `1 - gmsm`, `1 - chroma` are accurate near 0.
  """
  return jnp.square(a - b) / (a * a + b * b + c)


def gms_map(
  x: jax.Array,
  y: jax.Array,
  *,
  max_val: float = 1.0,
  c: float = GMS_C,
  downsample: bool = True,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Gradient magnitude similarity map (Xue et al. 2014), as computed inside piq's `gmsd`.

  Args:
    x: reference images `[B, H, W, C]` in `[0, max_val]`, C = 1 (grey) or 3 (RGB).
    y: distorted images, same shape.
    max_val: the dynamic range (1.0 for `[0, 1]` images, 255.0 for 8-bit values).
    c: stability constant for `[0, 1]`-scaled gradient magnitudes (170/255^2, the paper's
      T = 170 for 8-bit data).
    downsample: apply the paper's 2x2 mean pooling first (True in GMSD and piq).
    mask: weights in [0, 1] of the pixels to compare (see `gmsm`); the map's values at
      positions of weight 0 are not part of `gmsm` / `gmsd`.

  Returns:
    `[B, ceil(H/2), ceil(W/2), 1]` (or `[B, H, W, 1]` without downsampling), values in
    `(0, 1]`, 1 where both gradient magnitudes agree.
  """
  d, _ = _gms_dissimilarity(x, y, max_val, c, downsample, mask, name="gms_map")
  return 1.0 - d


def _gms_dissimilarity(x, y, max_val, c, downsample, mask, *, name):
  """Checks the inputs and returns `1 - gms_map`, `[B, H', W', 1]`, and the weights of its
  positions `[B, H', W']` (None without a mask)."""
  x, y = checks.as_image_pair(x, y, channels=(1, 3), metric=name)
  factor = 2 if downsample else 1
  checks.check_min_size(
    x,
    factor * _MIN_MAP_SIZE - (factor - 1),
    metric=name,
    hint="Gradient similarity needs a 3x3 Prewitt window after 2x2 downsampling; use larger "
    "images or downsample=False.",
  )
  if mask is None:
    lx, ly = _luma_image(x, max_val, downsample), _luma_image(y, max_val, downsample)
    return _dissimilarity(_gradient_magnitude(lx), _gradient_magnitude(ly), c)[..., None], None
  # A pixel counts when all its channels do; pooling is normalised (a pooled pixel is the
  # weighted mean of the luma it covers, odd edges not averaged with zeros); a position counts
  # (with the pooled weight) only when its whole 3x3 Prewitt window has weight > 0, so no
  # gradient is taken across a weight-0 pixel.
  m = jnp.min(masks.checked(mask, x, metric=name), axis=-1)
  lx, ly = masks.zeroed(m, _luma(x, max_val)), masks.zeroed(m, _luma(y, max_val))
  if downsample:
    m, lx, ly = masks.normalised_pool(m, lx, ly, pool=_downsample)
  inside = jnp.pad(m > 0, ((0, 0), (1, 1), (1, 1)), constant_values=True)  # borders as piq's
  h, w = m.shape[1:]
  whole = functools.reduce(
    jnp.logical_and, [inside[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]
  )
  d = _dissimilarity(_gradient_magnitude(lx), _gradient_magnitude(ly), c)[..., None]
  return d, jnp.where(whole, m, 0.0)


def gmsm(
  x: jax.Array,
  y: jax.Array,
  *,
  max_val: float = 1.0,
  c: float = GMS_C,
  downsample: bool = True,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Gradient magnitude similarity mean: the mean of `gms_map` per image, `[B]`, 1 if x == y.

  Args:
    x: reference images `[B, H, W, C]` in `[0, max_val]`, C = 1 or 3.
    y: distorted images, same shape.
    max_val: the dynamic range.
    c: stability constant for `[0, 1]` data (see `gms_map`).
    downsample: the paper's 2x2 mean pooling (see `gms_map`).
    mask: weights in [0, 1] of the pixels to compare, `[B, H, W]` (or broadcastable; per channel
      `[B, H, W, C]`, a pixel then counting with its smallest channel weight). The pooling is
      normalised (a pooled pixel is the weighted mean of the pixels it covers) and the map is
      averaged with the pooled weights over the positions whose whole 3x3 Prewitt window has
      weight > 0 (a gradient across an ignored pixel is not defined): pixels of weight 0 change
      nothing, NaN included, and get a zero gradient. An image with no such position gets 1.

  Returns:
    `[B]`, in `(0, 1]`; the loss is `1 - gmsm`.
  """
  d, weights = _gms_dissimilarity(x, y, max_val, c, downsample, mask, name="gmsm")
  if weights is None:
    return 1.0 - _spatial_mean(d)
  return 1.0 - masks.weighted_mean(d[..., 0], weights, (1, 2), empty=0.0)


def gmsd(
  x: jax.Array,
  y: jax.Array,
  *,
  max_val: float = 1.0,
  c: float = GMS_C,
  downsample: bool = True,
  ddof: int = 0,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Gradient magnitude similarity deviation (Xue et al. 2014): the std of `gms_map`, `[B]`.

  Matches `piq.gmsd(x, y, data_range=max_val, reduction='none')` (population standard
  deviation over the map, two-pass; computed on `1 - map`, which has the same deviation). For
  identical images `1 - map` is exactly 0, so are the variance and, through `_sqrt_zero_grad`,
  the gradient. (Under `grad` XLA may round the x and y paths differently, e.g. by contracting
  products into FMAs, leaving a deviation ~1e-13 and gradients ~1e-7: still finite.)

  Args:
    x: reference images `[B, H, W, C]` in `[0, max_val]`, C = 1 or 3.
    y: distorted images, same shape.
    max_val: the dynamic range.
    c: stability constant for `[0, 1]` data (see `gms_map`).
    downsample: the paper's 2x2 mean pooling (see `gms_map`).
    ddof: the deviation divides by N - ddof, N the map's pixels: 0 as piq, 1 as the authors'
      `GMSD.m` (MATLAB's `std`).
    mask: weights of the pixels, as in `gmsm`: the weighted deviation of the map over the
      positions `gmsm` averages, N the sum of their weights. An image with N <= ddof gets 0.

  Returns:
    `[B]`, >= 0 (lower is better, 0 for identical images); already a loss.
  """
  if ddof not in (0, 1):
    raise ValueError(f"gmsd: ddof must be 0 (piq) or 1 (GMSD.m), got {ddof}.")
  d, weights = _gms_dissimilarity(x, y, max_val, c, downsample, mask, name="gmsd")
  if weights is None:
    mean = _spatial_mean(d)[:, None, None, None]
    variance = _spatial_mean(jnp.square(d - mean))
    pixels = d.shape[1] * d.shape[2]
  else:
    d = d[..., 0]
    mean = masks.weighted_mean(d, weights, (1, 2), empty=0.0)[:, None, None]
    variance = masks.weighted_mean(jnp.square(d - mean), weights, (1, 2), empty=0.0)
    pixels = jnp.sum(weights, axis=(1, 2))
  if ddof:
    variance = jnp.where(pixels > ddof, variance * (pixels / jnp.maximum(pixels - ddof, 1)), 0.0)
  return _sqrt_zero_grad(variance)


def chroma_similarity(
  x: jax.Array, y: jax.Array, *, max_val: float = 1.0, c: float = CHROMA_C
) -> jax.Array:
  """Chrominance similarity of the colour quality score, as Vertolli & Davies use it, `[B]`.

  Per pixel, on the I and Q channels of NTSC YIQ (`rgb_to_yiq`) of the `[0, 1]`-scaled images,
  at full resolution and without filtering,

    S_I = (2 I_x I_y + c) / (I_x^2 + I_y^2 + c),   S_Q likewise,

  and the score is the mean of `S_I * S_Q` over the pixels. This is `chrominance` / `qs` in
  Vertolli's `models/friqa.py` (github.com/MichaelOVertolli/Tensorflow-ConnectorGraph), whose
  loss is `1 - mean(S_I * S_Q)`, weighted against l1 and `1 - GMSM`. Two deliberate
  differences from that code:
  - It computes YIQ with rounded coefficients (I = 0.60 R - 0.28 G - 0.32 B, Q = 0.21 R -
    0.52 G + 0.31 B); we use the FCC ones of `rgb_to_yiq` (0.5959, ... as piq and MATLAB).
    Both have rows summing to 0, so greys have I = Q = 0 either way.
  - It applies C = 0.0026 to images rescaled to [0, 255], where C is negligible (S jumps from 1
    to ~0 for colour changes of a fraction of a grey level near achromatic pixels). We apply C
    to `[0, 1]` data, where 0.0026 ~ 170/255^2 is the GMSD constant it evidently comes from.
    The code's behaviour is `c=0.0026 / 255**2`.
  Note the product form: where both |I| and |Q| are large, the complementary colour
  (S_I ~ S_Q ~ -1) scores as high as the identical one; the score lies in [-1, 1].

  Args:
    x: reference RGB images `[B, H, W, 3]` in `[0, max_val]`.
    y: distorted RGB images, same shape.
    max_val: the dynamic range.
    c: stability constant for I and Q of `[0, 1]` RGB.

  Returns:
    `[B]`, in `[-1, 1]`, 1 for identical images; the loss is `1 - chroma_similarity`.

  References:
    Vertolli & Davies 2017, https://arxiv.org/abs/1708.02237, who take the colour term of the
    quality score (QS) from Gupta et al. 2017.
  """
  if jnp.ndim(x) == 4 and jnp.shape(x)[-1] == 1:
    raise ValueError(
      "chroma_similarity compares the I/Q chrominance of RGB images, got grey images of shape "
      f"{jnp.shape(x)} (no chrominance). Pass [B, H, W, 3] RGB, or drop the chroma term for grey "
      "data and use gmsm/gmsd alone."
    )
  x, y = checks.as_image_pair(x, y, channels=(3,), metric="chroma_similarity")
  (i_x, q_x), (i_y, q_y) = (_yiq_planes(a, (1, 2), 1.0 / max_val) for a in (x, y))
  d_i, d_q = _dissimilarity(i_x, i_y, c), _dissimilarity(q_x, q_y, c)
  # 1 - S_I S_Q, averaged, then taken from 1: exactly 0 where x == y, so identical images score
  # exactly 1 (the mean of a map of ones, a sum times 1 / N, need not be).
  return 1.0 - _spatial_mean(d_i + d_q - d_i * d_q)


def chroma_similarity_map(
  x: jax.Array, y: jax.Array, *, max_val: float = 1.0, c: float = CHROMA_C
) -> jax.Array:
  """Per-pixel `S_I * S_Q` of `chroma_similarity` (same arguments; its mean is that score):
  `[B, H, W, 1]` in `[-1, 1]`, 1 where the chrominance agrees. For display."""
  x, y = checks.as_image_pair(x, y, channels=(3,), metric="chroma_similarity_map")
  yiq_x, yiq_y = color.rgb_to_yiq(x / max_val), color.rgb_to_yiq(y / max_val)
  sim = (2 * yiq_x * yiq_y + c) / (jnp.square(yiq_x) + jnp.square(yiq_y) + c)
  return (sim[..., 1] * sim[..., 2])[..., None]
