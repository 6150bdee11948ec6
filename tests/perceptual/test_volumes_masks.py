"""SSIM / MS-SSIM of volumes `[B, D, H, W, C]`, and masks for SSIM, MS-SSIM, GMSM/GMSD and the
pixel losses.

Volumes are checked against scikit-image's n-D SSIM (float64), pytorch_msssim's 3-D mode (values
it computed on the same input) and a float64 MS-SSIM transcription written here. Masks are checked
against a brute-force normalised convolution written here (every window's weighted statistics in
numpy loops), and by their contracts: weight-0 pixels change nothing and get no gradient, an
all-ones mask is no mask, a masked region's map is its crop's map where the window fits.
"""

import functools
import os

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.metrics import structural_similarity

import perceptual
from perceptual import filters

IMAGES = os.path.join(os.path.dirname(__file__), "peer_images")
SKIMAGE_GAUSSIAN = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def _goldhill_volume(name: str) -> np.ndarray:
  """A real-image volume `[45, 50, 63]` in [0, 1], float64: 45 crops of piq's goldhill test
  photograph (or its JPEG-compressed copy), each 2 rows down and 1 column right of the last."""
  img = np.asarray(Image.open(os.path.join(IMAGES, name)).convert("L"), np.float64) / 255.0
  return np.stack([img[100 + 2 * k : 150 + 2 * k, 120 + k : 183 + k] for k in range(45)])


def _noisy_pair(shape, seed=0, noise=0.1):
  rng = np.random.default_rng(seed)
  x = rng.random(shape)
  return x, np.clip(x + noise * rng.standard_normal(shape), 0.0, 1.0)


# --- volumes ---------------------------------------------------------------------------------


def test_ssim_of_volumes_equals_scikit_images_nd_ssim():
  x, y = _goldhill_volume("piq_goldhill.png"), _goldhill_volume("piq_goldhill_jpeg.png")
  expected = structural_similarity(x, y, data_range=1.0, **SKIMAGE_GAUSSIAN)
  cx, cy = _noisy_pair((13, 16, 19, 2), seed=1)
  expected_colour = structural_similarity(
    cx, cy, data_range=1.0, channel_axis=-1, **SKIMAGE_GAUSSIAN
  )
  with jax.enable_x64(True):  # our taps are float32-rounded: 1e-8 apart from scipy's float64 ones
    np.testing.assert_allclose(
      perceptual.ssim(x[None, ..., None], y[None, ..., None]), [expected], rtol=1e-7
    )
    np.testing.assert_allclose(perceptual.ssim(cx[None], cy[None]), [expected_colour], rtol=1e-7)
  np.testing.assert_allclose(
    perceptual.ssim(jnp.float32(x[None, ..., None]), jnp.float32(y[None, ..., None])),
    [expected],
    rtol=2e-6,
  )


def test_volume_values_of_pytorch_msssims_3d_mode():
  # pytorch_msssim 1.0.0 (torch 2.15.0, float64 tensors [1, 1, 45, 50, 63]) on the goldhill
  # volume: ssim(X, Y, data_range=1.0) and ms_ssim(X, Y, data_range=1.0, win_size=3) (its 3-D
  # MS-SSIM needs > 160 voxels per side with 11 taps). Its Gaussian taps are computed in
  # float32 and do not sum to 1, which biases the variances in flat (JPEG) blocks: it sits
  # 1.5e-6 / 6.5e-7 from the float64 values (scikit-image's SSIM agrees with ours to 6e-9).
  x, y = _goldhill_volume("piq_goldhill.png"), _goldhill_volume("piq_goldhill_jpeg.png")
  x, y = jnp.float32(x[None, ..., None]), jnp.float32(y[None, ..., None])
  np.testing.assert_allclose(perceptual.ssim(x, y), [0.7789947278573196], atol=3e-6)
  np.testing.assert_allclose(
    perceptual.ms_ssim(x, y, filter_size=3), [0.9471402729543137], atol=2e-6
  )


def _reference_ms_ssim(x, y, taps, weights, odd):
  """Float64 MS-SSIM of one grey volume or image (numpy / scipy, 'valid' Gaussian filtering)."""
  c1, c2 = 0.01**2, 0.03**2
  cut = len(taps) // 2

  def blur(v):
    for axis in range(v.ndim):
      v = ndimage.correlate1d(v, taps, axis=axis, mode="constant")
    return v[tuple(slice(cut, s - cut) for s in v.shape)]

  def pool(v):
    if odd == "pad":  # zeros at the start, averaged in
      v = np.pad(v, [(s % 2, s % 2) for s in v.shape])
    else:  # the last row repeated
      v = np.pad(v, [(0, s % 2) for s in v.shape], mode="edge")
    v = v[tuple(slice(0, s - s % 2) for s in v.shape)]
    blocks = v.reshape([n for s in v.shape for n in (s // 2, 2)])
    return blocks.mean(axis=tuple(range(1, 2 * v.ndim, 2)))

  value = 1.0
  for scale, w in enumerate(weights):
    if scale:
      x, y = pool(x), pool(y)
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    cs = (2 * cov + c2) / (vx + vy + c2)
    if scale == len(weights) - 1:
      cs = cs * (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    value *= max(cs.mean(), 0.0) ** w
  return value


@pytest.mark.parametrize("odd", ["pad", "replicate"])
def test_ms_ssim_of_volumes_equals_a_float64_transcription(odd):
  x, y = _noisy_pair((27, 30, 33), seed=2, noise=0.2)  # odd sides at the first scales
  weights = (0.2, 0.3, 0.5)
  taps = filters.gaussian_kernel(5, 1.5).astype(np.float64)
  expected = _reference_ms_ssim(x, y, taps, weights, odd)
  with jax.enable_x64(True):
    ours = perceptual.ms_ssim(
      x[None, ..., None], y[None, ..., None], filter_size=5, weights=weights, odd=odd
    )
  np.testing.assert_allclose(ours, [expected], rtol=1e-9)


def test_volume_gradients_are_finite_and_correct():
  x, y = _noisy_pair((2, 12, 13, 14, 2), seed=3)
  ssim = functools.partial(perceptual.ssim, filter_size=5)
  ms_ssim = functools.partial(perceptual.ms_ssim, filter_size=3, weights=(0.5, 0.5))
  with jax.enable_x64(True):
    for f in (ssim, ms_ssim):
      jax.test_util.check_grads(lambda v, f=f: jnp.sum(f(x, v)), (y,), order=1, modes=["rev"])
  flat = np.full((1, 12, 12, 12, 1), 0.5, np.float32)
  for f in (ssim, ms_ssim):
    for a, b in ((x[:1, ..., :1], x[:1, ..., :1]), (flat, flat), (flat, x[:1, :12, :12, :12, :1])):
      g = jax.grad(lambda v, f=f, a=a: jnp.sum(f(jnp.float32(a), v)))(jnp.float32(b))
      assert np.isfinite(np.asarray(g)).all()


def test_volumes_keep_the_cpu_speed_path_and_are_plain_xla_elsewhere():
  x, y = _noisy_pair((16, 24, 24, 24, 1), seed=4)  # 2 chunks of 8 (tests run on 8 CPU devices)
  f = jax.jit(jax.value_and_grad(lambda v: jnp.sum(perceptual.ssim(jnp.float32(x), v))))
  args = (jnp.float32(y),)
  cpu = f.trace(*args).lower(lowering_platforms=("cpu",)).as_text()
  assert "stablehlo.while" in cpu and "stablehlo.case" in cpu  # chunks, fusion boundaries
  cuda = f.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  assert "stablehlo.while" not in cuda and "stablehlo.case" not in cuda


def test_volume_options_that_do_not_apply_say_so():
  x = jnp.zeros((1, 16, 16, 16, 1))
  with pytest.raises(ValueError, match="2-D window table filters images only"):
    perceptual.ssim(x, x, window=np.ones((3, 3)) / 9)
  with pytest.raises(ValueError, match="downsample"):
    perceptual.ssim(x, x, downsample=True)
  with pytest.raises(ValueError, match="at least 11x11x11"):
    perceptual.ssim(jnp.zeros((1, 8, 16, 16, 1)), jnp.zeros((1, 8, 16, 16, 1)))


# --- masks -----------------------------------------------------------------------------------


def _brute_force_masked_terms(x, y, m, taps):
  """Luminance and contrast-structure maps of one grey image or volume by normalised
  convolution ('valid'), and the mask at each window's centre: float64 loops over windows."""
  c1, c2 = 0.01**2, 0.03**2
  n = len(taps)
  window = functools.reduce(np.multiply.outer, [taps] * x.ndim)
  out = tuple(s - n + 1 for s in x.shape)
  lum, cs, centre = np.ones(out), np.ones(out), np.zeros(out)
  for p in np.ndindex(*out):
    box = tuple(slice(i, i + n) for i in p)
    w = window * m[box]
    centre[p] = m[tuple(i + n // 2 for i in p)]
    if w.sum() == 0:
      continue
    w = w / w.sum()
    a, b = x[box], y[box]
    mx, my = (w * a).sum(), (w * b).sum()
    vx, vy = (w * (a - mx) ** 2).sum(), (w * (b - my) ** 2).sum()
    cov = (w * (a - mx) * (b - my)).sum()
    lum[p] = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    cs[p] = (2 * cov + c2) / (vx + vy + c2)
  return lum, cs, centre


def _soft_mask(shape, seed):
  rng = np.random.default_rng(seed)
  m = rng.random(shape)
  return np.where(m < 0.3, 0.0, m)  # 30 % of the pixels ignored, the others weighted


@pytest.mark.parametrize("shape", [(18, 21), (11, 12, 13)], ids=["image", "volume"])
def test_masked_ssim_equals_a_brute_force_normalised_convolution(shape):
  x, y = _noisy_pair(shape, seed=5, noise=0.2)
  m = _soft_mask(shape, seed=6)
  taps = filters.gaussian_kernel(5, 1.5).astype(np.float64)
  lum, cs, centre = _brute_force_masked_terms(x, y, m, taps)
  expected = (centre * lum * cs).sum() / centre.sum()
  with jax.enable_x64(True):
    ours = perceptual.ssim(x[None, ..., None], y[None, ..., None], filter_size=5, mask=m[None])
    ours_map = perceptual.ssim_map(
      x[None, ..., None], y[None, ..., None], filter_size=5, mask=m[None]
    )
  np.testing.assert_allclose(ours, [expected], rtol=1e-9)
  np.testing.assert_allclose(ours_map[0, ..., 0], lum * cs, rtol=1e-9, atol=1e-12)


def test_masked_ms_ssim_equals_a_brute_force_normalised_convolution():
  x, y = _noisy_pair((26, 29), seed=7, noise=0.2)
  m = _soft_mask((26, 29), seed=8)
  taps = filters.gaussian_kernel(5, 1.5).astype(np.float64)
  weights = (0.4, 0.6)
  lum, cs, centre = _brute_force_masked_terms(x, y, m, taps)
  fine = (centre * cs).sum() / centre.sum()
  # Normalised 2x2 pooling, odd sides padded with weight-0 zeros at the start ("pad").
  pad = lambda v: np.pad(v, [(s % 2, s % 2) for s in v.shape])[
    : (v.shape[0] + 1) // 2 * 2, : (v.shape[1] + 1) // 2 * 2
  ]
  block_sum = lambda v: v.reshape(v.shape[0] // 2, 2, v.shape[1] // 2, 2).sum(axis=(1, 3))
  pm = block_sum(pad(m))
  px, py = (np.where(pm > 0, block_sum(pad(m * v)) / np.where(pm > 0, pm, 1), 0) for v in (x, y))
  lum2, cs2, centre2 = _brute_force_masked_terms(px, py, pm / 4, taps)
  coarse = (centre2 * lum2 * cs2).sum() / centre2.sum()
  expected = fine ** weights[0] * coarse ** weights[1]
  with jax.enable_x64(True):
    ours = perceptual.ms_ssim(
      x[None, ..., None], y[None, ..., None], filter_size=5, weights=weights, mask=m[None]
    )
  np.testing.assert_allclose(ours, [expected], rtol=1e-9)


def _crop_cases():
  x, y = _noisy_pair((2, 40, 44, 3), seed=9)
  m = np.zeros((2, 40, 44))
  m[:, 6:33, 9:40] = 1.0
  yield "ssim_map", perceptual.ssim_map, x, y, m, (slice(6, 33), slice(9, 40))
  v, w = _noisy_pair((1, 24, 26, 28, 1), seed=10)
  mv = np.zeros((1, 24, 26, 28))
  mv[:, 3:21, 2:25, 5:26] = 1.0
  yield "ssim_map_volume", perceptual.ssim_map, v, w, mv, (slice(3, 21), slice(2, 25), slice(5, 26))
  m = np.zeros((2, 40, 44))
  m[:, 6:34, 8:40] = 1.0  # in whole 2x2 blocks: gms_map pools first
  yield "gms_map", perceptual.gms_map, x, y, m, (slice(6, 34), slice(8, 40))


@pytest.mark.parametrize("case", list(_crop_cases()), ids=lambda c: c[0])
def test_a_masked_regions_map_is_its_crops_map_where_the_window_fits(case):
  _, fn, x, y, m, region = case
  masked = fn(jnp.float32(x), jnp.float32(y), mask=m)
  cropped = fn(jnp.float32(x[(slice(None), *region)]), jnp.float32(y[(slice(None), *region)]))
  if fn is perceptual.ssim_map:  # 'valid': every window of the crop lies in the region
    at = tuple(
      slice(r.start, r.start + n) for r, n in zip(region, cropped.shape[1:-1], strict=True)
    )
    np.testing.assert_allclose(masked[(slice(None), *at)], cropped, rtol=1e-5, atol=1e-6)
  else:  # pooled 2x2, then a 3x3 window: the crop's map without its zero-padded border
    at = tuple(
      slice(r.start // 2 + 1, r.start // 2 + n - 1)
      for r, n in zip(region, cropped.shape[1:-1], strict=True)
    )
    np.testing.assert_allclose(
      masked[(slice(None), *at)], cropped[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-6
    )


def test_masked_gmsm_and_gmsd_average_the_positions_whose_window_is_unmasked():
  # A block-aligned region away from the border: the positions with a whole 3x3 window of
  # weight > 0 are the pooled region's interior, the crop's map without its padded border.
  x, y = (jnp.float32(v) for v in _noisy_pair((2, 40, 44, 3), seed=18))
  m = np.zeros((2, 40, 44))
  m[:, 6:34, 8:40] = 1.0
  inner = perceptual.gms_map(x[:, 6:34, 8:40], y[:, 6:34, 8:40])[:, 1:-1, 1:-1, 0]
  np.testing.assert_allclose(perceptual.gmsm(x, y, mask=m), jnp.mean(inner, axis=(1, 2)), rtol=1e-6)
  for ddof in (0, 1):
    expected = jnp.std(inner.reshape(2, -1), axis=1, ddof=ddof)
    np.testing.assert_allclose(perceptual.gmsd(x, y, mask=m, ddof=ddof), expected, rtol=1e-5)


def _masked_metrics():
  ms = functools.partial(perceptual.ms_ssim, weights=(0.5, 0.5))
  return {
    "ssim": perceptual.ssim,
    "ms_ssim": ms,
    "gmsm": perceptual.gmsm,
    "gmsd": perceptual.gmsd,
    "mse": perceptual.mse,
    "mae": perceptual.mae,
    "psnr": perceptual.psnr,
  }


@pytest.mark.parametrize("name", list(_masked_metrics()))
@pytest.mark.parametrize("channels", [1, 3])
def test_pixels_under_a_zero_mask_change_nothing_and_get_no_gradient(name, channels):
  fn = _masked_metrics()[name]
  x, y = (jnp.float32(v) for v in _noisy_pair((2, 48, 52, channels), seed=11))
  m = np.ones((2, 48, 52), np.float32)
  m[:, 20:31, 5:40] = 0.0
  m[1, :4] = 0.5
  hole = (slice(None), slice(20, 31), slice(5, 40))
  value = fn(x, y, mask=m)
  for fill in (np.nan, np.inf, 0.7):
    np.testing.assert_array_equal(fn(x.at[hole].set(fill), y.at[hole].set(fill), mask=m), value)
  gx, gy = jax.grad(lambda a, b: jnp.sum(fn(a, b, mask=m)), argnums=(0, 1))(
    x.at[hole].set(np.nan), y
  )
  for g in (gx, gy):
    g = np.asarray(g)
    assert np.isfinite(g).all()
    assert np.all(g[hole] == 0.0)
    assert np.abs(g).max() > 0.0
  volume = fn in (perceptual.ssim,)
  if volume:  # the same for volumes
    v, w = (jnp.float32(a) for a in _noisy_pair((1, 16, 17, 18, 1), seed=12))
    mv = np.ones((1, 16, 17, 18), np.float32)
    mv[:, 4:9] = 0.0
    np.testing.assert_array_equal(fn(v.at[:, 4:9].set(np.nan), w, mask=mv), fn(v, w, mask=mv))


@pytest.mark.parametrize("name", list(_masked_metrics()))
def test_an_all_ones_mask_is_no_mask(name):
  fn = _masked_metrics()[name]
  x, y = (jnp.float32(v) for v in _noisy_pair((3, 48, 52, 3), seed=13))
  np.testing.assert_allclose(fn(x, y, mask=np.ones((3, 48, 52))), fn(x, y), rtol=2e-6, atol=1e-7)
  half = np.full((1, 48, 52), 0.5)  # a constant weight is no mask either
  np.testing.assert_allclose(fn(x, y, mask=half), fn(x, y), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(_masked_metrics()))
def test_an_image_with_nothing_to_compare(name):
  fn = _masked_metrics()[name]
  x, y = (jnp.float32(v) for v in _noisy_pair((2, 48, 52, 1), seed=14))
  m = np.ones((2, 48, 52), np.float32)
  m[0] = 0.0
  values = fn(x, y, mask=m)
  expected = {"gmsd": 0.0, "mse": 0.0, "mae": 0.0, "psnr": np.inf}.get(name, 1.0)
  assert values[0] == expected and np.isfinite(values[1])
  g = jax.grad(lambda b: jnp.sum(jnp.where(jnp.isfinite(fn(x, b, mask=m)), fn(x, b, mask=m), 0.0)))(
    y
  )
  assert np.all(np.asarray(g)[0] == 0.0)


def test_a_per_channel_mask_weights_each_channel():
  x, y = (jnp.float32(v) for v in _noisy_pair((2, 32, 32, 3), seed=15))
  m = np.zeros((2, 32, 32, 3))
  m[..., 1] = 1.0  # only the green channel counts
  np.testing.assert_allclose(
    perceptual.ssim(x, y, mask=m), perceptual.ssim(x[..., 1:2], y[..., 1:2]), rtol=1e-6
  )
  np.testing.assert_allclose(
    perceptual.mse(x, y, mask=m), perceptual.mse(x[..., 1:2], y[..., 1:2]), rtol=1e-6
  )


def test_a_traced_mask_works_under_jit():
  x, y = (jnp.float32(v) for v in _noisy_pair((2, 32, 32, 1), seed=16))
  m = jnp.asarray(_soft_mask((2, 32, 32), seed=17), jnp.float32)
  for fn in (perceptual.ssim, perceptual.gmsm, perceptual.mse):
    np.testing.assert_allclose(
      jax.jit(lambda a, b, w, fn=fn: fn(a, b, mask=w))(x, y, m), fn(x, y, mask=m), rtol=1e-6
    )


def test_bad_masks_say_what_is_wrong():
  x = jnp.zeros((2, 32, 32, 1))
  with pytest.raises(ValueError, match=r"weights must lie in \[0, 1\]"):
    perceptual.ssim(x, x, mask=np.full((2, 32, 32), 2.0))
  with pytest.raises(ValueError, match=r"weights must lie in \[0, 1\]"):
    perceptual.mse(x, x, mask=np.full((2, 32, 32), np.nan))
  with pytest.raises(ValueError, match="does not broadcast"):
    perceptual.gmsm(x, x, mask=np.ones((2, 31, 32)))
  with pytest.raises(ValueError, match="spatial shape"):
    perceptual.ssim(x, x, mask=np.ones((32,)))
  with pytest.raises(ValueError, match="sample_covariance=True takes no mask"):
    perceptual.ssim(x, x, mask=np.ones((2, 32, 32)), sample_covariance=True)
  with pytest.raises(ValueError, match="downsample=True takes no mask"):
    perceptual.ssim(x, x, mask=np.ones((2, 32, 32)), downsample=True)
