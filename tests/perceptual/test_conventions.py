"""Other projects' conventions, one option away, against the values their own tests hard-code.

The inputs are those projects' test images (tests/perceptual/peer_images, README.md there); each
test names the project, file and test its expected values come from. Values are copied, with the
tolerance the peer uses where ours can meet it.
"""

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import perceptual

IMAGES = os.path.join(os.path.dirname(__file__), "peer_images")


def _load(name: str) -> np.ndarray:
  """uint8 pixels `[H, W, C]` of a peer image, its file checked against SHA256SUMS."""
  path = os.path.join(IMAGES, name)
  with open(os.path.join(IMAGES, "SHA256SUMS")) as fh:
    sums = dict(line.split()[::-1] for line in fh)
  with open(path, "rb") as fh:
    assert hashlib.sha256(fh.read()).hexdigest() == sums[name], name
  pixels = np.asarray(Image.open(path))
  return pixels[..., None] if pixels.ndim == 2 else pixels


def _batch(names, scale=1.0 / 255.0, dtype=jnp.float32):
  return jnp.asarray(np.stack([_load(n) for n in names]).astype(np.float64) * scale, dtype)


# --- TensorFlow, tensorflow/python/ops/image_ops_test.py (checkerboards, RGB 180x240, uint8 / 255)
TF_PAIRS = [("tf_checkerboard1.png", "tf_checkerboard2.png")]
TF_PAIRS += [("tf_checkerboard1.png", "tf_checkerboard3.png")]
TF_PAIRS += [("tf_checkerboard2.png", "tf_checkerboard3.png")]


def test_ssim_equals_tensorflows_matlab_values():
  # SSIMTest._ssim (pairs 1-2, 1-3, 2-3), testBatch, atol=1e-4: our defaults are TF's.
  x, y = (_batch([p[i] for p in TF_PAIRS]) for i in (0, 1))
  np.testing.assert_allclose(perceptual.ssim(x, y), [0.230880, 0.231153, 0.996828], atol=1e-4)


def test_ms_ssim_pads_odd_sizes_as_tensorflow_with_odd_replicate():
  # MultiscaleSSIMTest._msssim, testBatch (rtol=1e-4). The 180x240 pyramid passes 45 and 23 rows:
  # TensorFlow (and Wang's msssim.m) repeat the last row; pytorch_msssim (our default) pads zeros
  # at the start, which gives 0.0867 instead of 0.0910 here.
  x, y = (_batch([p[i] for p in TF_PAIRS]) for i in (0, 1))
  expected = [0.091016, 0.091025, 0.999567]
  np.testing.assert_allclose(perceptual.ms_ssim(x, y, odd="replicate"), expected, rtol=1e-4)
  assert abs(float(perceptual.ms_ssim(x, y)[0]) - expected[0]) > 3e-3


# --- scikit-image, skimage/metrics/tests/test_structural_similarity.py
def _camera_pair():
  """Its module-level inputs: data.camera() and a noisy copy (legacy seed 5, sigma 20, uint8)."""
  cam = _load("skimage_camera.png")[..., 0]
  noisy = np.clip(cam + 20.0 * np.random.RandomState(5).randn(*cam.shape), 0, 255).astype(np.uint8)
  return (jnp.asarray(v[None, ..., None], jnp.float64) for v in (cam, noisy))


def test_ssim_equals_scikit_images_ipol_value():
  # test_gaussian_structural_similarity_vs_IPOL: gaussian_weights=True, population covariance.
  with jax.enable_x64(True):
    x, y = _camera_pair()
    np.testing.assert_allclose(perceptual.ssim(x, y, max_val=255.0), 0.357959091663361, atol=1.5e-3)


def test_uniform_window_with_sample_covariance_equals_scikit_images_legacy_default():
  # test_mssim_vs_legacy: skimage's defaults (7x7 uniform window, sample covariance), decimal=7.
  with jax.enable_x64(True):
    x, y = _camera_pair()
    options = dict(max_val=255.0, window="uniform", filter_size=7, sample_covariance=True)
    np.testing.assert_allclose(perceptual.ssim(x, y, **options), 0.3674518327910367, atol=1.5e-7)
    assert abs(float(perceptual.ssim(x, y, max_val=255.0)[0]) - 0.3674518327910367) > 1e-3


# --- Tom Distler's IQA 1.1.2 (copy grevutiu-gabriel/iqa), test/source/test_ssim.c, test_psnr.c.
# Grey 256x256 "Einstein" set on 0..255; IQA compares values rounded to 5 decimals.
EINSTEIN = ["einstein", "blur", "contrast", "flipvertical", "impulse", "jpg", "meanshift"]
# include/ssim.h g_gaussian_window: fspecial('gaussian', 11, 1.5) rounded to 6 decimals (sum
# 0.999998), used as it is; its upper half here, the rows below mirror it.
IQA_GAUSSIAN_UPPER = [
  [1e-6, 8e-6, 3.7e-5, 1.12e-4, 2.19e-4, 2.74e-4],
  [8e-6, 5.8e-5, 2.74e-4, 8.31e-4, 1.619e-3, 2.021e-3],
  [3.7e-5, 2.74e-4, 1.296e-3, 3.937e-3, 7.668e-3, 9.577e-3],
  [1.12e-4, 8.31e-4, 3.937e-3, 1.196e-2, 2.3294e-2, 2.9091e-2],
  [2.19e-4, 1.619e-3, 7.668e-3, 2.3294e-2, 4.5371e-2, 5.6662e-2],
  [2.74e-4, 2.021e-3, 9.577e-3, 2.9091e-2, 5.6662e-2, 7.0762e-2],
]


def _iqa_gaussian() -> np.ndarray:
  half = np.asarray(IQA_GAUSSIAN_UPPER)
  quarter = np.concatenate([half, half[-2::-1]])  # 11 rows x 6 columns
  return np.concatenate([quarter, quarter[:, -2::-1]], axis=1)


def _einstein():
  x = _batch(["iqa_einstein.png"] * len(EINSTEIN), scale=1.0)
  return x, _batch([f"iqa_{name}.png" for name in EINSTEIN], scale=1.0)


@pytest.mark.parametrize(
  "window,expected",
  [
    # ans_key_einstein_gauss: the rounded Gaussian, not normalised.
    ("iqa_gaussian", [1.0, 0.69408, 0.91327, 0.28771, 0.83957, 0.66246, 0.98836]),
    # ans_key_einstein_linear: an 8x8 box (even: 'valid' positions only).
    (np.full((8, 8), 1 / 64), [1.0, 0.72422, 0.91273, 0.25001, 0.82213, 0.68550, 0.98845]),
  ],
)
def test_given_windows_give_iqas_values(window, expected):
  window = _iqa_gaussian() if isinstance(window, str) else window
  assert _iqa_gaussian().shape == (11, 11) and abs(_iqa_gaussian().sum() - 0.999998) < 1e-9
  x, y = _einstein()
  values = np.asarray(perceptual.ssim(x, y, max_val=255.0, window=window))
  np.testing.assert_allclose(values, expected, atol=5e-6)


def test_a_given_window_is_used_as_given():
  # Normalising IQA's table (or using the exact Gaussian) moves the blur value by 9e-5: IQA's
  # 5-decimal answers are those of the table as it is.
  x, y = _einstein()
  window = _iqa_gaussian()
  normalised = float(
    perceptual.ssim(x[1:2], y[1:2], max_val=255.0, window=window / window.sum())[0]
  )
  assert abs(normalised - 0.69408) > 5e-5


def test_psnr_equals_iqas_small_cases():
  # test_psnr: 1x1 {128} vs {136} -> 30.06900, 2x2 {0, 128, 192, 255} with 192 -> 173 -> 28.57633.
  # In float32 PSNR is within 2 ulp (4e-6 dB at 30 dB) of its exact value 30.0690039: 30.069006.
  one = perceptual.psnr(jnp.full((1, 1, 1, 1), 128.0), jnp.full((1, 1, 1, 1), 136.0), max_val=255.0)
  np.testing.assert_allclose(one, 30.06900, atol=1e-5)
  x = jnp.asarray([0.0, 128.0, 192.0, 255.0]).reshape(1, 2, 2, 1)
  np.testing.assert_allclose(
    perceptual.psnr(x, x.at[0, 1, 0, 0].set(173.0), max_val=255.0), 28.57633, atol=1e-5
  )
  with jax.enable_x64(True):  # exact in float64: 10 log10(255^2 / 64)
    one = perceptual.psnr(
      jnp.full((1, 1, 1, 1), 128.0), jnp.full((1, 1, 1, 1), 136.0), max_val=255.0
    )
    np.testing.assert_allclose(one, 10 * np.log10(255.0**2 / 64), rtol=1e-14)


# --- piq, tests/test_gmsd.py::test_gmsd_compare_with_matlab (MATLAB GMSD.m values, 0..255 inputs).
@pytest.mark.parametrize(
  "reference,distorted,expected",
  [
    ("piq_goldhill.png", "piq_goldhill_jpeg.png", 0.138012587141798),
    ("piq_I01.png", "piq_i01_01_5.png", 0.094124655829098),
  ],
)
def test_gmsd_with_ddof_1_equals_the_authors_matlab(reference, distorted, expected):
  # GMSD.m takes MATLAB's std2 (N - 1); piq, and our default, the population deviation (N), which
  # is 7.6e-6 / 1.0e-5 relative lower here: inside piq's rtol=1e-5, outside a float64 comparison.
  with jax.enable_x64(True):
    x, y = (_batch([name], scale=1.0, dtype=jnp.float64) for name in (reference, distorted))
    # 1e-7: the colour pair's luma weights reach XLA as float32 constants (1.4e-8 relative here).
    np.testing.assert_allclose(perceptual.gmsd(x, y, max_val=255.0, ddof=1), [expected], rtol=1e-7)
    assert abs(float(perceptual.gmsd(x, y, max_val=255.0)[0]) / expected - 1) > 5e-6


# --- IQA-PyTorch, ResultsCalibra/results_official.csv: the authors' MATLAB code on MATLAB's
# rgb2gray of five TID2013 pairs (ResultsCalibra.md, footnotes 2 and 6: no automatic downsampling).
TID = ["I03", "I04", "I06", "I08", "I19"]
OFFICIAL_GMSD = [
  0.220347639470143,
  0.0005220585050504579,
  0.0004482814810014102,
  0.134631933046914,
  0.204996493556054,
]
OFFICIAL_SSIM = [0.6993, 0.9978, 0.9989, 0.9669, 0.6519]
# results_compare/pnsr_org_result.txt: skimage's PSNR over the three RGB channels.
OFFICIAL_PSNR = [21.11363373, 20.98719596, 27.01387096, 23.30025543, 21.61864985]


def _tid(dtype=jnp.float32):
  ref = _batch([f"pyiqa_ref_{i}.png" for i in TID], dtype=dtype)
  return ref, _batch([f"pyiqa_dist_{i}.png" for i in TID], dtype=dtype)


def test_matlab_grey_conversion_and_gmsd_ddof_give_iqa_pytorchs_official_values():
  # Rounded rgb2gray matters most where the distortion is slight (I04, I06): pyiqa's own YIQ
  # grey is off by 1.7e-3 relative there.
  with jax.enable_x64(True):
    ref, dist = (perceptual.rgb_to_grey(v, convention="matlab") for v in _tid(jnp.float64))
    np.testing.assert_allclose(perceptual.gmsd(ref, dist, ddof=1), OFFICIAL_GMSD, rtol=1e-9)
    itu = [perceptual.rgb_to_grey(v) for v in _tid(jnp.float64)]
    assert not np.allclose(perceptual.gmsd(*itu, ddof=1), OFFICIAL_GMSD, rtol=1e-4)


def test_matlab_grey_ssim_and_rgb_psnr_give_iqa_pytorchs_official_values():
  ref, dist = _tid()
  grey = [perceptual.rgb_to_grey(v, convention="matlab") for v in (ref, dist)]
  np.testing.assert_allclose(perceptual.ssim(*grey), OFFICIAL_SSIM, atol=5e-5)  # 4 decimals
  np.testing.assert_allclose(perceptual.psnr(ref, dist), OFFICIAL_PSNR, rtol=1e-6)


# --- Wang's ssim.m automatic downsampling (no peer test hard-codes a value with it).
def _ssim_m_downsample(image: np.ndarray) -> np.ndarray:
  """ssim.m in float64: f = max(1, round(min(M, N) / 256)); imfilter(img, ones(f) / f^2,
  'symmetric', 'same') (an even filter covers i .. i + f - 1, an odd one is centred); img(1:f:end,
  1:f:end)."""
  h, w = image.shape
  f = max(1, int(np.floor(min(h, w) / 256 + 0.5)))
  before = (f - 1) // 2
  padded = np.pad(image, ((before, f - 1 - before),) * 2, mode="symmetric")
  box = sum(padded[i : i + h, j : j + w] for i in range(f) for j in range(f)) / f**2
  return box[::f, ::f]


@pytest.mark.parametrize("shape", [(384, 512), (700, 900), (641, 775)])
def test_downsample_follows_ssim_m(shape):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, shape).astype(np.float64)
  y = np.clip(x + rng.normal(0, 20, shape), 0, 255)
  with jax.enable_x64(True):
    reduced = [jnp.asarray(_ssim_m_downsample(v)[None, ..., None]) for v in (x, y)]
    expected = perceptual.ssim(*reduced, max_val=255.0)
    full = [jnp.asarray(v[None, ..., None]) for v in (x, y)]
    np.testing.assert_allclose(
      perceptual.ssim(*full, max_val=255.0, downsample=True), expected, rtol=1e-12
    )
  if shape == (384, 512):  # f = 2 on even sides: 2x2 mean pooling, as piq's downsample=True
    pooled = [v.reshape(192, 2, 256, 2).mean(axis=(1, 3)) for v in (x, y)]
    np.testing.assert_allclose(_ssim_m_downsample(x), pooled[0], rtol=1e-15)


# --- identical images score exactly their floor, whatever the batch around them.
@pytest.mark.parametrize(
  "name,floor",
  [("ssim", 1.0), ("ms_ssim", 1.0), ("gmsm", 1.0), ("chroma_similarity", 1.0), ("gmsd", 0.0)],
)
def test_an_identical_pair_inside_a_batch_scores_exactly_its_floor(name, floor):
  rng = np.random.default_rng(1)
  shape = (5, 171, 199, 3)  # odd sides
  x = jnp.asarray(rng.random(shape, np.float32))
  y = jnp.asarray(rng.random(shape, np.float32)).at[2].set(x[2])
  fn = getattr(perceptual, name)
  assert float(fn(x, y)[2]) == floor
  assert float(jax.jit(fn)(x, y)[2]) == floor
