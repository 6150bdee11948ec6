"""Tests for perceptual.gradient: GMS map, GMSM, GMSD and the chrominance similarity.

References: piq 0.8.0 `gmsd` values and autograd gradients, and a float64 numpy port of
Vertolli & Davies' chrominance term, all stored in golden/gradient.json by
tools/golden/make_gradient_golden.py; closed forms on ramps and single pixels; properties.
"""

import functools
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from perceptual import gradient

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "gradient.json").read_text())
CASES = {case["name"]: case for case in GOLDEN["cases"]}
RGB_CASES = [name for name, case in CASES.items() if case["shape"][-1] == 3]
GRAD_CASES = [name for name, case in CASES.items() if "grad_gmsd" in case]

gmsd = jax.jit(gradient.gmsd, static_argnames=("max_val", "c", "downsample"))
gmsm = jax.jit(gradient.gmsm, static_argnames=("max_val", "c", "downsample"))
gms_map = jax.jit(gradient.gms_map, static_argnames=("max_val", "c", "downsample"))
chroma = jax.jit(gradient.chroma_similarity, static_argnames=("max_val", "c"))
METRICS = {"gmsd": gmsd, "gmsm": gmsm, "chroma": chroma}
# d sum(metric) / d y, jitted once per metric so that tests sharing a shape share the compile.
VALUE_AND_GRAD = {
  name: jax.jit(jax.value_and_grad(lambda x, y, fn=fn: fn(x, y).sum(), argnums=1))
  for name, fn in METRICS.items()
}


@functools.partial(jax.jit, static_argnames="max_val")
def _gms_both(x, y, max_val):
  return gradient.gmsd(x, y, max_val=max_val), gradient.gmsm(x, y, max_val=max_val)


# --- Inputs of the golden cases: the same recipes as tools/golden/make_gradient_golden.py. ---


def _reference_image(spec: dict) -> np.ndarray:
  if spec["src"] == "uniform":
    rng = np.random.default_rng(spec["seed"])
    return rng.random((spec["h"], spec["w"], spec["channels"])).astype(np.float32)
  img = getattr(skimage.data, spec["src"])().astype(np.float64) / 255.0
  if img.ndim == 2:
    img = img[..., None]
  h, w, f = spec["h"], spec["w"], spec["f"]
  crop = img[spec["top"] : spec["top"] + h * f, spec["left"] : spec["left"] + w * f]
  return crop.reshape(h, f, w, f, -1).mean(axis=(1, 3)).astype(np.float32)


def _distort(x: np.ndarray, spec: dict) -> np.ndarray:
  x = x.astype(np.float64)
  kind = spec["kind"]
  if kind == "noise":
    rng = np.random.default_rng(spec["seed"])
    y = np.clip(x + spec["sigma"] * rng.standard_normal(x.shape), 0.0, 1.0)
  elif kind == "blur":
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    y = sum(p[i : i + x.shape[0], j : j + x.shape[1]] for i in range(3) for j in range(3)) / 9
  elif kind == "contrast":
    y = 0.5 + spec["gain"] * (x - 0.5)
  elif kind == "scale_red":
    y = x.copy()
    y[..., 0] *= spec["gain"]
  elif kind == "inverse":
    y = 1.0 - x
  elif kind == "uniform":
    y = np.random.default_rng(spec["seed"]).random(x.shape)
  else:
    raise ValueError(kind)
  return y.astype(np.float32)


@functools.cache
def _pair(name: str) -> tuple[np.ndarray, np.ndarray]:
  """The case's images `[1, H, W, C]`, scaled to [0, max_val], checked against the checksums."""
  case = CASES[name]
  x = _reference_image(case["image"])
  y = _distort(x, case["distort"])
  np.testing.assert_allclose(np.sum(x, dtype=np.float64), case["checksum_x"], rtol=1e-9)
  np.testing.assert_allclose(np.sum(y, dtype=np.float64), case["checksum_y"], rtol=1e-9)
  return x[None] * case["max_val"], y[None] * case["max_val"]


# One small shape for most property tests, so they share compiled functions.
SHAPE = (2, 12, 14, 3)


def _rand(key: int, shape: tuple[int, ...] = SHAPE) -> jax.Array:
  return jax.random.uniform(jax.random.key(key), shape)


# --- Golden values. ---


def test_golden_versions_recorded():
  assert {"piq", "torch", "numpy", "scikit_image"} <= set(GOLDEN["versions"])


@pytest.mark.parametrize("name", CASES)
def test_gmsd_and_gmsm_match_piq(name):
  x, y = _pair(name)
  deviation, mean = _gms_both(x, y, CASES[name]["max_val"])
  np.testing.assert_allclose(deviation, [CASES[name]["gmsd"]], atol=2e-6)
  np.testing.assert_allclose(mean, [CASES[name]["gmsm"]], atol=2e-6)


@pytest.mark.parametrize("name", GRAD_CASES)
def test_gmsd_gradient_matches_piq_autograd(name):
  x, y = _pair(name)
  grad = jax.jit(jax.grad(lambda y: gradient.gmsd(x, y).sum()))(y)
  expected = np.asarray(CASES[name]["grad_gmsd"])[None]
  np.testing.assert_allclose(grad, expected, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name", RGB_CASES)
def test_chroma_matches_numpy_port_of_vertolli_davies(name):
  x, y = _pair(name)
  np.testing.assert_allclose(chroma(x, y), [CASES[name]["chroma"]], atol=2e-6)


@pytest.mark.parametrize("name", RGB_CASES)
def test_chroma_reproduces_vertolli_davies_code_with_8bit_constant(name):
  """Their code (rounded YIQ coefficients, C = 0.0026 on 0..255 data) is c = 0.0026 / 255**2
  here, up to the coefficient rounding (measured <= 0.004 on these cases)."""
  x, y = _pair(name)
  code = chroma(x, y, c=gradient.CHROMA_C / 255**2)
  np.testing.assert_allclose(code, [CASES[name]["chroma_vd_code"]], atol=0.01)


def test_batch_of_golden_cases_is_per_image():
  """Batching does not mix images: the batched call equals the per-case values."""
  names = ["camera_noise", "moon_contrast"]
  crop = lambda a: a[:, :32, :32]
  xs = np.concatenate([crop(_pair(n)[0]) for n in names])
  ys = np.concatenate([crop(_pair(n)[1]) for n in names])
  each = [float(gmsd(crop(_pair(n)[0]), crop(_pair(n)[1]))[0]) for n in names]
  np.testing.assert_allclose(gmsd(xs, ys), each, rtol=1e-6)


# --- Closed forms. ---


def test_gms_map_on_ramps_closed_form():
  """Horizontal ramps x = a*j, y = b*j: the pooled ramp has slope 2a per pixel, so the interior
  Prewitt gradient is (3 rows * 2 * 2a) / 3 = 4a and GMS = (32ab + c) / (16a^2 + 16b^2 + c)."""
  a, b, c = 0.01, 0.004, gradient.GMS_C
  j = np.arange(24, dtype=np.float32)
  x = np.broadcast_to(a * j, (1, 20, 24))[..., None]
  y = np.broadcast_to(b * j, (1, 20, 24))[..., None]
  expected = (32 * a * b + c) / (16 * a**2 + 16 * b**2 + c)
  sim = gms_map(x, y)
  chex.assert_shape(sim, (1, 10, 12, 1))
  np.testing.assert_allclose(sim[0, 1:-1, 1:-1, 0], expected, rtol=1e-5)
  # Without pooling the interior gradient is 2a.
  sim = gms_map(x, y, downsample=False)
  chex.assert_shape(sim, (1, 20, 24, 1))
  expected = (8 * a * b + c) / (4 * a**2 + 4 * b**2 + c)
  np.testing.assert_allclose(sim[0, 1:-1, 1:-1, 0], expected, rtol=1e-5)


def test_gms_map_odd_size_pools_trailing_row_with_zeros():
  """piq pads an odd side with one zero row before 2x2 pooling: a constant image of value v
  pools to v inside and v/2 on the trailing row, which creates a gradient only there."""
  x = np.full((1, 9, 8, 1), 0.8, np.float32)
  y = np.full((1, 9, 8, 1), 0.4, np.float32)
  sim = np.asarray(gms_map(x, y))[0, :, :, 0]
  chex.assert_shape(sim, (5, 4))
  # Interior rows far from every border see no gradient in either image.
  np.testing.assert_array_equal(sim[1:3, 1:-1], 1.0)
  # The last row (half-zero block) sees gradients of ratio 2:1 -> similarity below one.
  assert np.all(sim[-1] < 1.0)


def test_chroma_single_pixel_closed_form():
  """Red vs green: I = 0.5959 / -0.2746, Q = 0.2115 / -0.5227 (FCC YIQ)."""
  c = gradient.CHROMA_C
  x = np.array([1.0, 0.0, 0.0], np.float32).reshape(1, 1, 1, 3)
  y = np.array([0.0, 1.0, 0.0], np.float32).reshape(1, 1, 1, 3)
  s = lambda a, b: (2 * a * b + c) / (a * a + b * b + c)
  expected = s(0.5959, -0.2746) * s(0.2115, -0.5227)
  np.testing.assert_allclose(chroma(x, y), [expected], rtol=1e-5)
  # The authors' code applied C on the 0..255 scale (c=0.0026/255**2 here): C is negligible
  # and S tends to 2ab / (a^2 + b^2).
  dice = lambda a, b: 2 * a * b / (a * a + b * b)
  code = chroma(x, y, c=0.0026 / 255**2)
  np.testing.assert_allclose(code, [dice(0.5959, -0.2746) * dice(0.2115, -0.5227)], rtol=1e-5)


def test_max_val_scales_like_data_range():
  x, y = _rand(0), _rand(1)
  for name, fn in METRICS.items():
    np.testing.assert_allclose(
      fn(255 * x, 255 * y, max_val=255.0), fn(x, y), rtol=1e-5, err_msg=name
    )


# --- Properties and robustness. ---


@pytest.mark.parametrize("name", METRICS)
def test_identical_images(name):
  """Exact values when both images go through the same arithmetic; under grad XLA may round
  the x and y paths differently (FMA contraction), which leaves ~1e-13, and tiny gradients."""
  x = _rand(2)
  fn = METRICS[name]
  perfect = 0.0 if name == "gmsd" else 1.0
  np.testing.assert_array_equal(fn(x, x), perfect)
  value, grad = VALUE_AND_GRAD[name](x, x)
  np.testing.assert_allclose(value, 2 * perfect, atol=1e-6)
  chex.assert_tree_all_finite(grad)
  assert np.abs(np.asarray(grad)).max() < 1e-5


@pytest.mark.parametrize("name", METRICS)
@pytest.mark.parametrize(
  "pair",
  ["zeros", "constants", "zero_vs_constant", "inverse", "tiny_difference", "flat_vs_noise"],
)
def test_finite_values_and_gradients(name, pair):
  x = _rand(3)
  x, y = {
    "zeros": (jnp.zeros_like(x), jnp.zeros_like(x)),
    "constants": (jnp.full_like(x, 0.3), jnp.full_like(x, 0.7)),
    "zero_vs_constant": (jnp.zeros_like(x), jnp.full_like(x, 0.5)),
    "inverse": (x, 1.0 - x),
    "tiny_difference": (x, x + 1e-6 * _rand(4, x.shape)),
    "flat_vs_noise": (jnp.full_like(x, 0.5), x),
  }[pair]
  value, grad = VALUE_AND_GRAD[name](x, y)
  chex.assert_tree_all_finite((value, grad))
  if name == "gmsd":
    assert np.all(np.asarray(value) >= 0)
  else:
    assert np.all(np.asarray(value) <= 2.0 + 1e-6)  # sums of two similarities <= 1


def test_flat_images_differ_only_at_the_zero_padded_border():
  """Two constants have no gradient inside (GMS = c / c = 1); piq's zero padding creates edges
  of heights 0.2 and 0.9 on the border, where the similarity drops."""
  x, y = jnp.full((1, 12, 12, 1), 0.2), jnp.full((1, 12, 12, 1), 0.9)
  sim = np.asarray(gms_map(x, y))[0, :, :, 0]
  np.testing.assert_array_equal(sim[1:-1, 1:-1], 1.0)
  c = gradient.GMS_C  # border rows: gy = (3v - 0) / 3 = v, gx = 0
  np.testing.assert_allclose(sim[0, 1:-1], (2 * 0.2 * 0.9 + c) / (0.2**2 + 0.9**2 + c), rtol=1e-5)


def test_inverse_image_blind_spots():
  """|grad(1 - x)| = |grad x|: GMS is 1 away from the zero-padded border; and the chrominance
  product scores complementary colours (I, Q -> -I, -Q) like identical ones where |I|, |Q|
  are large, both properties of the published formulas."""
  x = _rand(5, (1, 16, 16, 3))
  sim = gms_map(x, 1.0 - x)
  np.testing.assert_allclose(sim[0, 1:-1, 1:-1], 1.0, atol=1e-5)
  saturated = jnp.array([[[[1.0, 0.0, 0.2]]]])  # I ~ 0.53, Q ~ 0.27
  np.testing.assert_allclose(chroma(saturated, 1.0 - saturated), [1.0], atol=0.05)


def test_gmsd_increases_with_noise():
  x, _ = _pair("camera_noise")
  noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
  values = [float(gmsd(x, np.clip(x + s * noise, 0, 1))[0]) for s in (0.01, 0.05, 0.2)]
  assert values[0] < values[1] < values[2]
  sims = [float(gmsm(x, np.clip(x + s * noise, 0, 1))[0]) for s in (0.01, 0.05, 0.2)]
  assert sims[0] > sims[1] > sims[2]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", METRICS)
def test_half_precision_inputs_compute_in_float32(name, dtype):
  x, y = _rand(6).astype(dtype), _rand(7).astype(dtype)
  fn = METRICS[name]
  value = fn(x, y)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, fn(x.astype(jnp.float32), y.astype(jnp.float32)), rtol=1e-6)
  chex.assert_tree_all_finite(VALUE_AND_GRAD[name](x, y))


def test_grey_and_rgb_agree_on_grey_content():
  """An RGB image with R = G = B has luma equal to the grey value (YIQ rows sum to 1)."""
  x, y = _rand(8, (2, 12, 12, 1)), _rand(9, (2, 12, 12, 1))
  rgb = lambda a: jnp.repeat(a, 3, axis=-1)
  np.testing.assert_allclose(gmsd(rgb(x), rgb(y)), gmsd(x, y), rtol=1e-5)
  # Greys have no chrominance at all: I = Q = 0 -> similarity c / c = 1.
  np.testing.assert_allclose(chroma(rgb(x), rgb(y)), 1.0, atol=1e-6)


# --- Input validation. ---


@pytest.mark.parametrize("name", METRICS)
def test_errors(name):
  fn = METRICS[name]
  x = np.zeros((2, 12, 12, 3), np.float32)
  with pytest.raises(ValueError, match="rank 4"):
    fn(x[0], x[0])
  with pytest.raises(ValueError, match="same shape"):
    fn(x, x[:, :10])
  with pytest.raises(ValueError, match="dtype"):
    fn(x.astype(np.uint8), x.astype(np.uint8))
  with pytest.raises(ValueError, match="channels"):
    fn(x[..., :2], x[..., :2])
  with pytest.raises(ValueError, match="channels"):
    fn(np.zeros((2, 12, 12, 4), np.float32), np.zeros((2, 12, 12, 4), np.float32))


@pytest.mark.parametrize("fn", [gmsd, gmsm, gms_map])
def test_too_small_images(fn):
  x = np.zeros((1, 4, 12, 1), np.float32)
  with pytest.raises(ValueError, match="at least 5x5"):
    fn(x, x)
  fn(x[:, :3, :3], x[:, :3, :3], downsample=False)  # 3x3 is enough without pooling
  with pytest.raises(ValueError, match="at least 3x3"):
    fn(x[:, :2], x[:, :2], downsample=False)
  fn(np.zeros((1, 5, 5, 1), np.float32), np.zeros((1, 5, 5, 1), np.float32))


def test_chroma_rejects_grey_with_fix():
  x = np.zeros((1, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match="RGB.*gmsm/gmsd"):
    chroma(x, x)


# --- Transformations and sharding. ---


@pytest.mark.parametrize("name", METRICS)
def test_vmap_matches_loop(name):
  fn = METRICS[name]
  xs, ys = _rand(10, (3, 2, 10, 10, 3)), _rand(11, (3, 2, 10, 10, 3))
  expected = jnp.stack([fn(x, y) for x, y in zip(xs, ys, strict=True)])
  np.testing.assert_allclose(jax.vmap(fn)(xs, ys), expected, rtol=1e-6)


def test_traces_once_per_shape():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(x, y):
    return gradient.gmsd(x, y) + (1 - gradient.gmsm(x, y)) + (1 - gradient.chroma_similarity(x, y))

  x = _rand(12)
  for key in range(3):
    loss(x, _rand(13 + key, x.shape))


@pytest.mark.parametrize("name", METRICS)
def test_sharded_batch_matches_single_device(name):
  fn = METRICS[name]
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  x, y = _rand(20, (8, 12, 14, 3)), _rand(21, (8, 12, 14, 3))
  expected = jax.device_put(fn(x, y), jax.devices()[0])
  xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
  value = fn(xs, ys)
  assert value.sharding.spec == P("data") or len(value.sharding.device_set) == 8
  # Similarities are 1 - mean(dissimilarity): one float32 ulp of 1 absolute, whatever the value.
  np.testing.assert_allclose(value, expected, rtol=1e-6, atol=2.5e-7)
  grad = VALUE_AND_GRAD[name](xs, ys)[1]
  np.testing.assert_allclose(grad, VALUE_AND_GRAD[name](x, y)[1], rtol=1e-5, atol=1e-7)
