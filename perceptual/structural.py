"""Structural similarity: SSIM, its map, and multi-scale SSIM.

All functions take a reference `x` and a distorted image `y`, float `[B, H, W, C]` in
`[0, max_val]` (half precision is promoted: every statistic is computed in float32), and return
one similarity per image, `[B]`, 1 for identical images (exactly, and never above 1). They are
similarities: use `1 - ssim(x, y)` as a loss. Conventions of Wang et al. 2004: Gaussian window,
population (biased) covariance, 'valid' filtering, mean over pixels, then over channels; they
match scikit-image (`gaussian_weights=True, sigma=1.5, use_sample_covariance=False`), dm_pix and
pytorch_msssim.

Values outside `[0, max_val]` are used as they are (nothing is clipped); the result stays finite
and at most 1, but the constants `(k * max_val)^2` no longer have their intended scale.

The five local statistics (means, variances, covariance) come from four filtered planes,
x, y, x^2 + y^2 and xy (SSIM only needs the sum of the variances): x in one filter pass, the
three planes that depend on y stacked in another (so a gradient w.r.t. y alone skips x's).

Gradients are defined for `grad`/`vjp` (the filter has a custom VJP), not for forward-mode `jvp`.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from perceptual import batching, checks, filters, masks

# Wang et al. 2003, Table 1: exponents of the five scales, finest first.
WANG_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Snell et al. 2017 weight every scale and component equally. We take that as exponent 1/M for
# each of the M scales (5 here): a geometric mean, with exponents summing to 1 like Wang's, so
# values stay comparable. Snell et al.'s formula with all exponents 1 is this value to the power M
# (same ordering, same maximiser). Fewer scales: `weights=(1 / 3,) * 3`.
EQUAL_WEIGHTS = (0.2,) * 5


def ssim(
  x: jax.Array,
  y: jax.Array,
  *,
  max_val: float = 1.0,
  filter_size: int = 11,
  filter_sigma: float = 1.5,
  k1: float = 0.01,
  k2: float = 0.03,
  padding: str = "VALID",
  window: str | np.ndarray = "gaussian",
  sample_covariance: bool = False,
  downsample: bool = False,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Structural similarity index per image (or volume).

  References:
    Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
    structural similarity", IEEE TIP 2004.

  Args:
    x: reference images `[B, H, W, C]` in `[0, max_val]`, or volumes `[B, D, H, W, C]` (the
      window is then separable along D, H and W).
    y: distorted images, same shape.
    max_val: the dynamic range (1.0 for `[0, 1]` images, 255.0 for 8-bit values).
    filter_size: taps of the Gaussian window (odd); images need at least this many pixels per
      side with padding="VALID".
    filter_sigma: standard deviation of the Gaussian window in pixels.
    k1: luminance constant, C1 = (k1 * max_val)^2.
    k2: contrast constant, C2 = (k2 * max_val)^2.
    padding: "VALID" (the SSIM map shrinks by filter_size - 1, as in the paper and every
      reference) or "SAME" (zero padding, map as large as the image: the SSIM loss of
      pytorch-ssim by Po-Hsun Su, used by Czolbe et al. 2020).
    window: "gaussian" (filter_size taps, filter_sigma), "uniform" (a filter_size x filter_size
      box: scikit-image's legacy default, 7 x 7 with `sample_covariance=True`), or the window
      itself, used as given (normalise it to sum 1 for the usual statistics; Tom Distler's IQA
      does not): 1-D taps (applied along H and W) or a square 2-D table (e.g.
      IQA's Gaussian rounded to 6 decimals, or its 8 x 8 box: with "VALID" padding even sizes
      work too; images only). An array overrides filter_size and filter_sigma.
    sample_covariance: scale the local (co)variances by N / (N - 1), N the window's taps
      (scikit-image's `use_sample_covariance=True`); default the population ones (Wang et al.).
    downsample: first reduce both images as Wang's `ssim.m` does: by F = max(1, round(min(H, W)
      / 256)), an F x F mean with symmetric borders, then every F-th pixel (IQA-PyTorch's and
      MATLAB's reference values use it). Images only, without a mask.
    mask: weights in [0, 1] of the pixels to compare, `[B, H, W]` (or `[B, D, H, W]`; any shape
      that broadcasts to it, or per channel to the images' shape); the local statistics are
      those of the pixels of weight > 0 (normalised convolution, see `_ssim_terms`), the value
      the map's mean weighted by the mask at each window's centre. Pixels of weight 0 do not
      change the value (whatever they hold, NaN included) and get a zero gradient.

  Returns:
    Mean SSIM per image, `[B]`, in [-1, 1].
  """
  x, y, mask, window = _prepared(
    x, y, mask, "ssim", window, filter_size, filter_sigma, padding, downsample, sample_covariance
  )
  options = (max_val, window, k1, k2, padding, sample_covariance)
  if mask is None:
    spatial = tuple(range(1, x.ndim - 1))
    mean_ssim = lambda pair, _: jnp.mean(_ssim_values(pair, options)[0], axis=spatial)
    return batching.map_batch(mean_ssim, (x, y))
  return batching.map_batch(lambda t, _: _masked_mean(*_ssim_values(t, options)), (x, y, mask))


def ssim_map(
  x: jax.Array,
  y: jax.Array,
  *,
  max_val: float = 1.0,
  filter_size: int = 11,
  filter_sigma: float = 1.5,
  k1: float = 0.01,
  k2: float = 0.03,
  padding: str = "VALID",
  window: str | np.ndarray = "gaussian",
  sample_covariance: bool = False,
  downsample: bool = False,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Local SSIM values: the map `ssim` averages.

  Args:
    x, y, max_val, filter_size, filter_sigma, k1, k2, padding, window, sample_covariance,
      downsample, mask: as in `ssim`.

  Returns:
    The SSIM map `[B, H', W', C]` (volumes `[B, D', H', W', C]`): H' = H - filter_size + 1 with
    padding="VALID", H with "SAME" (H after `downsample`). With a mask, the local statistics of
    the masked pixels; `ssim` averages the map weighted by the mask at each window's centre,
    and values at centres of weight 0 are not part of it.
  """
  x, y, mask, window = _prepared(
    x, y, mask, "ssim", window, filter_size, filter_sigma, padding, downsample, sample_covariance
  )
  options = (max_val, window, k1, k2, padding, sample_covariance)
  batched = (x, y) if mask is None else (x, y, mask)
  values = batching.map_batch(lambda t, _: _ssim_values(t, options)[0], batched)
  return values.reshape(*values.shape[:-1], -1, x.shape[-1])


def ms_ssim(
  x: jax.Array,
  y: jax.Array,
  *,
  max_val: float = 1.0,
  filter_size: int = 11,
  filter_sigma: float = 1.5,
  k1: float = 0.01,
  k2: float = 0.03,
  weights: Sequence[float] | str = WANG_WEIGHTS,
  normalize: str = "relu",
  padding: str = "VALID",
  odd: str = "pad",
  window: str | np.ndarray = "gaussian",
  sample_covariance: bool = False,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Multi-scale structural similarity per image (or volume).

  At each of the M = len(weights) scales the contrast-structure term cs (mean over pixels) is
  computed, then both images are 2x2 average pooled; odd sizes are first padded by one row or
  column (`odd`). At the coarsest scale the full SSIM is used. The
  result is prod_j term_j^weights_j per channel, then the mean over channels (as pytorch_msssim
  and TensorFlow).

  References:
    Wang, Simoncelli, Bovik, "Multiscale structural similarity for image quality assessment",
    Asilomar 2003.
    Snell et al., "Learning to generate images with perceptual similarity metrics", ICIP 2017
    (equal weights: `weights="equal"`).

  Args:
    x: reference images `[B, H, W, C]` in `[0, max_val]`, or volumes `[B, D, H, W, C]` (pooled
      2x2x2, as pytorch_msssim's 3-D mode); with padding="VALID" at least
      (filter_size - 1) * 2^(M - 1) + 1 pixels per side (161 for the defaults).
    y: distorted images, same shape.
    max_val, filter_size, filter_sigma, k1, k2, padding, window, sample_covariance: as in `ssim`.
    weights: exponents of the scales, finest first; their number is the number of scales, so
      32-64 pixel images work with 2-3 scales (e.g. `WANG_WEIGHTS[:3]`). "equal" is
      `EQUAL_WEIGHTS` (Snell et al.: every scale weighted 1/5).
    normalize: how terms below zero (anti-correlated structure) are kept out of the fractional
      powers, where they would give NaN: "relu" (default) maps them to 0, as pytorch_msssim and
      TensorFlow do, so the values match theirs; "simple" maps every term t to (t + 1) / 2 first,
      as torchmetrics' `normalize="simple"`, which keeps a gradient for anti-correlated images.
      Either way the derivative of t^w is taken as 0 at t <= 0 and bounded near 0 (see
      `_pow_nonneg`), so gradients stay finite.
    odd: how a side of odd length is pooled. "pad" (default): a row or column of zeros at the
      start, averaged in, as pytorch_msssim's `avg_pool2d(..., padding=size % 2)`; "replicate":
      the last row or column repeated at the end, as TensorFlow's `ssim_multiscale` and Wang's
      `msssim.m` (symmetric borders). Both give ceil(H / 2).
    mask: weights in [0, 1] of the pixels to compare, as in `ssim`. Each scale pools the mask
      and the masked images (a coarse pixel is the mask-weighted mean of the fine pixels it
      covers, padding rows of `odd="pad"` having weight 0) and averages its terms as `ssim`
      does; channels are averaged weighted by their mask's sum.

  Returns:
    MS-SSIM per image, `[B]`, in [0, 1].
  """
  x, y, mask, options = _ms_ssim_inputs(
    x,
    y,
    max_val,
    filter_size,
    filter_sigma,
    k1,
    k2,
    weights,
    normalize,
    padding,
    odd,
    window,
    sample_covariance,
    mask,
  )
  values = batching.map_batch(lambda t, _: _ms_ssim_values(t, options), _planes(x, y, mask))
  values = values.reshape(x.shape[0], x.shape[-1])
  if mask is None:
    return jnp.mean(values, axis=-1)
  mass = jnp.sum(mask, axis=tuple(range(1, x.ndim - 1)))  # [B, C]
  return masks.weighted_mean(values, mass, -1, empty=1.0)


def _ms_ssim_inputs(
  x,
  y,
  max_val,
  filter_size,
  filter_sigma,
  k1,
  k2,
  weights,
  normalize,
  padding,
  odd,
  window,
  sample_covariance,
  mask,
):
  """Checked images and mask (weight-0 pixels zeroed) and the options of `_ms_ssim_maps`."""
  if isinstance(weights, str):
    if weights != "equal":
      raise ValueError(f'weights must be a sequence of exponents or "equal", got {weights!r}.')
    weights = EQUAL_WEIGHTS
  weights = tuple(float(w) for w in weights)
  if not weights or min(weights) < 0:
    raise ValueError(f"weights must be one or more exponents >= 0, got {weights}.")
  if normalize not in ("relu", "simple"):
    raise ValueError(f'normalize must be "relu" or "simple", got {normalize!r}.')
  if odd not in ("pad", "replicate"):
    raise ValueError(f'ms_ssim: odd must be "pad" or "replicate", got {odd!r}.')
  window = _window(window, filter_size, filter_sigma, "ms_ssim")
  x, y = _checked(x, y, "ms_ssim", window, padding, scales=len(weights))
  mask = _checked_mask(mask, x, "ms_ssim", sample_covariance)
  x, y = _masked_out(x, y, mask)
  options = (max_val, window, k1, k2, padding, sample_covariance, weights, normalize, odd)
  return x, y, mask, options


def ms_ssim_maps(
  x: jax.Array,
  y: jax.Array,
  *,
  max_val: float = 1.0,
  filter_size: int = 11,
  filter_sigma: float = 1.5,
  k1: float = 0.01,
  k2: float = 0.03,
  weights: Sequence[float] | str = WANG_WEIGHTS,
  padding: str = "VALID",
  odd: str = "pad",
  window: str | np.ndarray = "gaussian",
  sample_covariance: bool = False,
  mask: jax.Array | None = None,
) -> list[jax.Array]:
  """The spatial maps MS-SSIM combines, one per scale, finest first.

  Scale j's map is the local contrast-structure term cs (the last scale: lum * cs, SSIM's map)
  of the images pooled j times, `[B, H_j', W_j', C]` (volumes `[B, D_j', H_j', W_j', C]`).
  Without a mask, `ms_ssim` is `prod_j mean(map_j)^weights_j` per channel (terms below 0 as its
  `normalize` says), then the mean over channels; with one, the means are weighted as in
  `ms_ssim`.

  Args:
    x, y, max_val, filter_size, filter_sigma, k1, k2, weights, padding, odd, window,
      sample_covariance, mask: as in `ms_ssim` (the weights set the number of scales).

  Returns:
    A list of `len(weights)` maps.
  """
  x, y, mask, options = _ms_ssim_inputs(
    x,
    y,
    max_val,
    filter_size,
    filter_sigma,
    k1,
    k2,
    weights,
    "relu",
    padding,
    odd,
    window,
    sample_covariance,
    mask,
  )
  batched = _planes(x, y, mask)
  maps = batching.map_batch(lambda t, _: [m for m, _ in _ms_ssim_maps(t, options)], batched)
  b, c = x.shape[0], x.shape[-1]
  return [jnp.moveaxis(m.reshape(b, c, *m.shape[1:]), 1, -1) for m in maps]


def _planes(x, y, mask):
  """`(x, y[, mask])` as B * C grey images `[B * C, ..., 1]`, channel-major per image.

  Channels are independent until MS-SSIM's final mean, so colour images are scored as B * C grey
  ones: the chunks of `map_batch` stay cache-sized for large images (one 192x192 RGB image is
  already 3.4 chunks' worth), and colour B=32 192x192 ran 1.6x faster than in NHWC.
  """
  b, *spatial, c = x.shape
  planes = lambda v: jnp.moveaxis(v, -1, 1).reshape(b * c, *spatial, 1)
  return tuple(map(planes, (x, y) if mask is None else (x, y, mask)))


def _ms_ssim_maps(images, options):
  """The term maps of every scale (cs, the last lum * cs) of checked `images` (x, y[, mask]) as
  `[B, ..., W' * C]`, and their weights (None without a mask)."""
  x, y, mask = (*images, None)[:3]
  max_val, window, k1, k2, padding, covariance, weights, _, odd = options
  maps = []
  for scale in range(len(weights)):
    if scale:
      x, y, mask = _pooled(x, y, mask, odd)
    lum, cs, weight = _ssim_terms(x, y, max_val, window, k1, k2, padding, covariance, mask)
    last = scale == len(weights) - 1
    maps.append((_at_most_one(lum * cs if last else cs), weight))
  return maps


def _ms_ssim_values(images, options):
  """MS-SSIM of checked `images` (x, y[, mask]), `[B]`."""
  weights, normalize = options[-3:-1]
  channels = images[0].shape[-1]
  terms = []
  for term, weight in _ms_ssim_maps(images, options):
    if weight is None:
      terms.append(_channel_mean(term, channels))  # [B, C]
    else:
      terms.append(_masked_mean(term, weight)[:, None])  # planes: one channel
  value = 1.0
  for term, w in zip(terms, weights, strict=True):
    if normalize == "simple":
      term = (term + 1.0) / 2.0
    value = value * _pow_nonneg(term, w)
  return jnp.mean(value, axis=-1)


def _pooled(x, y, mask, odd):
  """One MS-SSIM scale down: 2x2 (volumes 2x2x2) mean pooling; with a mask, normalised: the
  pooled mask, and the images' mask-weighted means over each block (0 where it is all 0)."""
  pool = functools.partial(filters.avg_pool, factor=2, odd=odd)
  if mask is None:
    return pool(x), pool(y), None
  mask, x, y = masks.normalised_pool(mask, x, y, pool=pool)
  return x, y, mask


def _window(window, filter_size: int, filter_sigma: float, metric: str) -> np.ndarray:
  """The window as a numpy array: 1-D taps (separable) or a 2-D table. The named ones sum to 1;
  given ones are used as given (IQA's rounded Gaussian sums to 0.999998), in float64 until they
  meet the images' dtype."""
  if isinstance(window, str):
    if filter_size < 1 or filter_size % 2 == 0:
      raise ValueError(f"{metric}: filter_size must be odd, got {filter_size}; e.g. 11 or 7.")
    if window == "gaussian":
      return filters.gaussian_kernel(filter_size, filter_sigma)
    if window == "uniform":  # float64 taps: 1 / 7 in float32 is 3.5e-8 off
      return np.full(filter_size, 1.0 / filter_size)
    raise ValueError(f'{metric}: window must be "gaussian", "uniform" or an array, got {window!r}.')
  table = np.asarray(window, np.float64)
  square = table.ndim == 2 and table.shape[0] == table.shape[1]
  if not (table.ndim == 1 or square) or not table.sum() > 0:
    raise ValueError(
      f"{metric}: a window must be 1-D taps or a square 2-D table with a positive sum, got "
      f"shape {table.shape}."
    )
  return table


def _prepared(x, y, mask, metric, window, filter_size, filter_sigma, padding, downsample, cov):
  """Checked images (reduced as Wang's ssim.m with `downsample`), the checked mask (or None) and
  the window array."""
  window = _window(window, filter_size, filter_sigma, metric)
  if downsample:  # on checked images; the reduced ones are checked against the window below
    if jnp.ndim(x) == 5:
      raise ValueError(f"{metric}: downsample=True is Wang's ssim.m for images; volumes take none.")
    if mask is not None:
      raise ValueError(
        f"{metric}: downsample=True takes no mask; reduce the images and the mask "
        "first (filters.wang_downsample) and pass those."
      )
    x, y = map(filters.wang_downsample, checks.as_image_pair(x, y, metric=metric))
  x, y = _checked(x, y, metric, window, padding, scales=1)
  mask = _checked_mask(mask, x, metric, cov)
  return (*_masked_out(x, y, mask), mask, window)


def _checked(x, y, metric: str, window: np.ndarray, padding: str, scales: int):
  """Validates the pair and the options; the size check says the minimum and how to go below."""
  x, y = checks.as_image_pair(x, y, metric=metric, volumes=True)
  if x.ndim == 5 and window.ndim == 2:
    raise ValueError(
      f"{metric}: a 2-D window table filters images only; give volumes 1-D taps (applied along "
      "D, H and W) or a named window."
    )
  if padding not in ("VALID", "SAME"):
    raise ValueError(f'{metric}: padding must be "VALID" or "SAME", got {padding!r}.')
  filter_size = window.shape[0]
  reach = filter_size - 1 if padding == "VALID" else 0
  min_size = reach * 2 ** (scales - 1) + 1
  if scales > 1:
    hint = (
      f"With filter_size={filter_size} and {scales} scales; pass fewer weights (each halves the "
      "minimum, e.g. weights=WANG_WEIGHTS[:3]) or a smaller filter_size."
    )
  else:
    hint = f'Pass a smaller filter_size (now {filter_size}) or padding="SAME".'
  checks.check_min_size(x, min_size, metric=metric, hint=hint)
  return x, y


def _checked_mask(mask, x, metric: str, sample_covariance: bool):
  """The mask broadcast to `x` (None stays None)."""
  if mask is None:
    return None
  if sample_covariance:
    raise ValueError(
      f"{metric}: sample_covariance=True takes no mask (the N / (N - 1) of a partly masked window "
      "is not defined by any reference); use the population statistics with a mask."
    )
  return masks.checked(mask, x, metric=metric)


def _masked_out(x, y, mask):
  """`x`, `y` with 0 at weight-0 pixels (`masks.zeroed`); unchanged without a mask."""
  return (x, y) if mask is None else (masks.zeroed(mask, x), masks.zeroed(mask, y))


def _masked_mean(values, weights):
  """The masked mean of a merged map `[B, ..., W' * C]` per image, `[B]`; 1 (identical as far as
  can be seen) for an image whose weights are all 0."""
  b = values.shape[0]
  return masks.weighted_mean(values.reshape(b, -1), weights.reshape(b, -1), -1, empty=1.0)


def _ssim_values(images, options):
  """The SSIM map of checked `images` (x, y[, mask]) as `[B, ..., W' * C]`, and the weights of
  its positions (the mask at each window's centre; None without one). `options` = max_val,
  window, k1, k2, padding, sample_covariance."""
  x, y, mask = (*images, None)[:3]
  lum, cs, weights = _ssim_terms(x, y, *options, mask)
  return _at_most_one(lum * cs), weights


def _ssim_terms(x, y, max_val, window, k1, k2, padding, sample_covariance, mask=None):
  """Luminance and contrast-structure maps of images `[B, H, W, C]` (volumes `[B, D, H, W, C]`)
  as `[B, H', W' * C]` (`[B, D', H', W' * C]`), and the weights of their positions (None without
  a mask).

  With a mask m (0 at the pixels to ignore, whose values must already be 0), every local
  statistic is a normalised convolution: the window-and-mask-weighted mean of the masked
  pixels, mu_x = F(m x) / F(m), E[x y] = F(m x y) / F(m) and so on, so a pixel of weight 0 takes
  no part in any window; a position's weight is m at its window's centre.
  """
  c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
  filter_size = window.shape[0]
  dims = x.ndim - 2
  centre = None  # the mask at each window's centre, for "SAME" the mask itself
  if padding == "SAME":
    low = (filter_size - 1) // 2
    pads = ((0, 0), *((low, filter_size - 1 - low),) * dims, (0, 0))
    x, y = jnp.pad(x, pads), jnp.pad(y, pads)  # zeros of the image, before the shift below
    centre = mask
    mask = None if mask is None else jnp.pad(mask, pads)  # with a mask: no data there
  b, *spatial, w, c = x.shape
  size = [s - filter_size + 1 for s in (*spatial, w)]
  axes = tuple(range(1, dims + 1))
  # (Co)variances do not change when x and y are shifted by constants; shifting by each plane's
  # mean makes the filtered second moments small, so E[x^2] - E[x]^2 loses far fewer float32
  # digits (1e-5 relative error on smooth photos without it). No gradient flows through the
  # shift: the exact value does not depend on it.
  if mask is None:
    mean_x = jax.lax.stop_gradient(jnp.mean(x, axis=axes))  # [B, C]
    mean_y = jax.lax.stop_gradient(jnp.mean(y, axis=axes))
  else:
    mean_x, mean_y = (
      jax.lax.stop_gradient(masks.weighted_mean(v, mask, axes, empty=1.0)) for v in (x, y)
    )
  # Everything below works on the NHWC images viewed as [B, H, W * C] (a free reshape): no
  # channel transpose, and every elementwise loop runs along a long contiguous last axis (with C
  # as an axis of its own, XLA's loops ran 3 elements at a time and colour cost 9x grey).
  merged = lambda v: v.reshape(b, *spatial, w * c)
  x = merged(x) - _per_column(mean_x, w, dims)
  y = merged(y) - _per_column(mean_y, w, dims)
  # x is filtered on its own: when only y is differentiated (a loss against a fixed reference),
  # the transposed filter of x's cotangent is then dead code that XLA drops (in one stack, all
  # four planes' transposes were computed: one in eight filter passes wasted). x goes in as a
  # buffer of its own: filtering it straight from the chunk's slice of the batch ran at a third
  # of the speed (XLA fused the slice and the shift into each of the 11 taps).
  filtered = lambda planes: filters.filter_window(
    planes.reshape(-1, b, *spatial, w, c), window, dims=dims
  ).reshape(-1, b, *size[:-1], size[-1] * c)
  if mask is None:
    mu_x = filtered(filters.materialized(lambda v: v[None], x))[0]
    mu_y, sq, xy = filtered(jnp.stack([y, x * x + y * y, x * y]))
    weights = None
  else:
    m = merged(mask)
    mx, my = m * x, m * y
    count, mu_x = filtered(filters.materialized(lambda v: jnp.stack([m, v]), mx))
    mu_y, sq, xy = filtered(jnp.stack([my, mx * x + my * y, mx * y]))
    mu_x, mu_y, sq, xy = (masks.ratio(v, count, empty=0.0) for v in (mu_x, mu_y, sq, xy))
    if centre is None:  # "VALID": the mask at each window's centre
      low = (filter_size - 1) // 2
      centre = mask[(slice(None), *(slice(low, low + n) for n in size))]
    weights = centre.reshape(b, *size[:-1], size[-1] * c)
  # Second moments about the plane means, and the local means about 0 for the luminance term.
  covariance = xy - mu_x * mu_y
  variances = sq - (mu_x * mu_x + mu_y * mu_y)
  shift_x, shift_y = _per_column(mean_x, size[-1], dims), _per_column(mean_y, size[-1], dims)
  total = float(np.sum(window, dtype=np.float64)) ** (1 if window.ndim == 2 else dims)
  if mask is None and abs(total - 1.0) > 1e-6:  # a given window used as given (IQA's: 0.999998)
    # The moments about 0 of a window of sum s, from those about the shifts c: mu = mu' + s c,
    # E[x^2] - mu^2 gains (1 - s)(2 c mu' + s c^2), E[xy] - mu_x mu_y likewise. (With a mask the
    # statistics are normalised: the window's sum cancels.)
    variances = variances + (1.0 - total) * (
      shift_x * (2.0 * mu_x + total * shift_x) + shift_y * (2.0 * mu_y + total * shift_y)
    )
    covariance = covariance + (1.0 - total) * (
      shift_x * mu_y + shift_y * mu_x + total * shift_x * shift_y
    )
    shift_x, shift_y = total * shift_x, total * shift_y
  mu_x, mu_y = mu_x + shift_x, mu_y + shift_y
  mu_xy = mu_x * mu_y
  mu_sq = mu_x * mu_x + mu_y * mu_y
  lum = (2.0 * mu_xy + c1) / (mu_sq + c1)
  # Written so that x == y gives numerator == denominator bit for bit (the variances are then
  # exactly twice the covariance): identical images score exactly 1. c2 > 0 keeps the
  # denominator positive when rounding makes the variance estimates slightly negative.
  if sample_covariance:  # N / (N - 1), N the window's taps
    taps = window.size if window.ndim == 2 else window.size**dims
    covariance, variances = covariance * (taps / (taps - 1)), variances * (taps / (taps - 1))
  cs = (2.0 * covariance + c2) / (variances + c2)
  return lum, cs, weights


def _per_column(means: jax.Array, width: int, dims: int = 2) -> jax.Array:
  """Per-channel values `[B, C]` repeated along the merged last axis: `[B, 1, W * C]` (with
  `dims` spatial axes, `dims - 1` axes of size 1 before it).

  A product with a 0/1 matrix (exact) rather than `jnp.tile`: XLA would fuse the tile into every
  consumer as an integer modulo per element, which made the colour loops 3-4x slower.
  """
  repeat = np.tile(np.eye(means.shape[-1], dtype=np.float32), (1, width))
  row = jnp.dot(means, repeat, precision=jax.lax.Precision.HIGHEST)
  return row.reshape(row.shape[0], *(1,) * (dims - 1), row.shape[-1])


def _channel_mean(v: jax.Array, channels: int) -> jax.Array:
  """Mean over pixels of a merged map `[B, ..., W * C]`, per channel: `[B, C]`."""
  b = v.shape[0]
  rows = jnp.mean(v, axis=tuple(range(1, v.ndim - 1)))
  return jnp.mean(rows.reshape(b, -1, channels), axis=1)


def _at_most_one(v: jax.Array) -> jax.Array:
  """Clips rounding excursions above 1 (SSIM <= 1 exactly in real arithmetic); keeps gradients."""
  return jnp.where(v > 1.0, 1.0, v)


_POW_EPS = 1e-6  # below this the derivative of t^w (w < 1) is evaluated at _POW_EPS


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _pow_nonneg(t: jax.Array, w: float) -> jax.Array:
  """max(t, 0)^w with a finite derivative: 0 for t <= 0, w * max(t, eps)^(w - 1) above.

  t^w with w < 1 has an infinite slope at 0, and jnp.maximum(t, 0)^w gives 0 * inf = NaN for
  t <= 0; pytorch_msssim and TensorFlow have exactly that NaN gradient.
  """
  return jnp.where(t > 0, jnp.maximum(t, 0.0) ** w, 0.0) if w else jnp.ones_like(t)


@_pow_nonneg.defjvp
def _pow_nonneg_jvp(w, primals, tangents):
  (t,), (dt,) = primals, tangents
  slope = jnp.where(t > 0, w * jnp.maximum(t, _POW_EPS) ** (w - 1.0), 0.0) if w else 0.0 * t
  return _pow_nonneg(t, w), slope * dt
