"""Tests for perceptual.structural (SSIM, SSIM map, MS-SSIM) and the filters they use."""

import functools
import importlib.util
import json
import os

import chex
import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from skimage.metrics import structural_similarity

from perceptual import filters, structural

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "structural.json")


def _golden_inputs():
  path = os.path.join(ROOT, "tools", "golden", "make_structural_golden.py")
  spec = importlib.util.spec_from_file_location("make_structural_golden", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # imports no torch: that happens in its main()
  return module.make_inputs()


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(f, x, y):
  """Per-image values `[B]` and the gradient of their sum w.r.t. `y`, jitted once per metric."""
  values, vjp = jax.vjp(lambda y: f(x, y), y)
  return values, vjp(jnp.ones_like(values))[0]


def _images(shape, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.random(shape).astype(np.float32)
  y = np.clip(x + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def test_golden_pytorch_msssim():
  """Values and gradient sums match pytorch_msssim (and pytorch-ssim's 'SAME' SSIM)."""
  with open(GOLDEN) as fh:
    golden = json.load(fh)
  inputs = _golden_inputs()
  assert set(golden["cases"]) == set(inputs)
  for name, case in golden["cases"].items():
    x, y = inputs[name]
    np.testing.assert_allclose(x.astype(np.float64).sum(), case["x_sum"], rtol=1e-12)
    np.testing.assert_allclose(y.astype(np.float64).sum(), case["y_sum"], rtol=1e-12)
    for fname, ref in case.items():
      if fname not in METRICS:
        continue
      value, grad = _value_and_grad(METRICS[fname], x, y)
      np.testing.assert_allclose(value, ref["value"], rtol=1e-5, atol=2e-6, err_msg=name + fname)
      chex.assert_tree_all_finite(grad)
      if ref["grad_sum"] is not None:
        scale = ref["grad_abs_sum"]
        np.testing.assert_allclose(grad.sum(), ref["grad_sum"], atol=1e-4 * scale + 1e-7)
        np.testing.assert_allclose(jnp.abs(grad).sum(), scale, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("shape", [(2, 24, 31, 3), (1, 16, 16, 1)])
def test_ssim_matches_skimage_and_dm_pix(shape):
  x, y = _images(shape, seed=shape[-1])
  ours = jax.jit(structural.ssim)(x, y)
  ref = [
    structural_similarity(
      np.float64(xi),
      np.float64(yi),
      gaussian_weights=True,
      sigma=1.5,
      use_sample_covariance=False,
      data_range=1.0,
      channel_axis=-1,
    )
    for xi, yi in zip(np.asarray(x), np.asarray(y), strict=True)
  ]
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  np.testing.assert_allclose(ours, jax.jit(dm_pix.ssim)(x, y), rtol=1e-5)
  # dm_pix's gradient (conv-based, autodiff) agrees with ours (shift-and-add, custom VJP).
  ours_grad = _value_and_grad(METRICS["ssim"], x, y)[1]
  ref_grad = _value_and_grad(dm_pix.ssim, x, y)[1]
  np.testing.assert_allclose(ours_grad, ref_grad, rtol=1e-3, atol=1e-6)


def test_ssim_options_and_map():
  x, y = _images((2, 20, 22, 3))
  options = dict(max_val=255.0, filter_size=7, filter_sigma=1.0, k1=0.02)
  ref = jax.jit(functools.partial(dm_pix.ssim, **options))(x * 255, y * 255)
  ours = jax.jit(functools.partial(structural.ssim, **options))(x * 255, y * 255)
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  ssim_map = jax.jit(structural.ssim_map)(x, y)
  chex.assert_shape(ssim_map, (2, 10, 12, 3))
  # scikit-image's full map, without the 5 pixels per side its mean also leaves out.
  for got, xi, yi in zip(ssim_map, np.float64(x), np.float64(y), strict=True):
    _, full = structural_similarity(
      xi, yi, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
      channel_axis=-1, full=True,
    )  # fmt: skip
    np.testing.assert_allclose(got, full[5:-5, 5:-5], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
    ssim_map.mean(axis=(1, 2, 3)), jax.jit(structural.ssim)(x, y), rtol=1e-6
  )
  same = jax.jit(lambda x, y: structural.ssim_map(x, y, padding="SAME"))(x, y)
  chex.assert_shape(same, x.shape)
  # Away from the zero-padded border, 'SAME' and 'VALID' are the same numbers.
  np.testing.assert_allclose(same[:, 5:-5, 5:-5], ssim_map, rtol=1e-6)


def _cases(shape):
  x, y = _images(shape)
  tiny = jnp.clip(x + 1e-6 * jnp.sign(y - x), 0, 1)
  return {
    "identical": (x, x),
    "constant": (jnp.full(shape, 0.3), jnp.full(shape, 0.7)),
    "constant_vs_image": (jnp.full(shape, 0.5), y),
    "zeros": (jnp.zeros(shape), jnp.zeros(shape)),
    "anti_correlated": (x, 1.0 - x),
    "tiny_difference": (x, tiny),
  }


METRICS = {
  "ssim": structural.ssim,
  "ms_ssim": structural.ms_ssim,
  "ssim_same": lambda x, y: structural.ssim(x, y, padding="SAME"),
  "ms_ssim_3": lambda x, y: structural.ms_ssim(x, y, weights=structural.WANG_WEIGHTS[:3]),
  "ms_ssim_equal_simple": lambda x, y: structural.ms_ssim(
    x, y, weights=(1 / 3,) * 3, normalize="simple"
  ),
}


@pytest.mark.parametrize("metric", ["ssim", "ssim_same", "ms_ssim_3", "ms_ssim_equal_simple"])
def test_finite_values_and_gradients(metric):
  """No NaN/Inf on flat, identical, all-zero, anti-correlated and nearly identical images."""
  f = METRICS[metric]
  for name, (x, y) in _cases((1, 41, 43, 2)).items():
    value, grad = _value_and_grad(f, x, y)
    chex.assert_tree_all_finite((value, grad))
    assert jnp.all(value <= 1.0), (name, value)
    assert jnp.all(value >= -1.0), (name, value)
    if name in ("identical", "zeros"):
      np.testing.assert_array_equal(value, 1.0, err_msg=name)
      np.testing.assert_allclose(grad, 0.0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_half_precision_inputs(dtype):
  x, y = _images((2, 41, 41, 3))
  x, y = x.astype(dtype), y.astype(dtype)
  for metric in ("ssim", "ms_ssim_3"):
    f = METRICS[metric]
    same = jax.jit(f)(x, x)
    assert same.dtype == jnp.float32
    np.testing.assert_array_equal(same, 1.0)
    if dtype != jnp.float32:  # (for float32 inputs the two sides would be the same call)
      # Statistics in float32: the half inputs, promoted, give the float32 result.
      x32, y32 = x.astype(jnp.float32), y.astype(jnp.float32)
      np.testing.assert_allclose(jax.jit(f)(x, y), jax.jit(f)(x32, y32), rtol=1e-6)
    chex.assert_tree_all_finite(_value_and_grad(f, x, y))


def test_ms_ssim_relu_and_simple():
  x, _ = _images((1, 41, 41, 1))
  anti = 1.0 - x
  # Anti-correlated structure: "relu" (pytorch_msssim, TensorFlow) gives 0 and a zero gradient;
  # "simple" gives a positive value with a gradient that points back towards x.
  value, grad = _value_and_grad(METRICS["ms_ssim_3"], x, anti)
  np.testing.assert_array_equal(value, 0.0)
  np.testing.assert_array_equal(grad, 0.0)
  value, grad = _value_and_grad(METRICS["ms_ssim_equal_simple"], x, anti)
  assert 0.0 < value[0] < 0.5
  assert jnp.sum(grad * (x - anti)) > 0
  # "equal" is EQUAL_WEIGHTS: a geometric mean of the five scale terms.
  assert structural.EQUAL_WEIGHTS == (0.2,) * 5
  with pytest.raises(ValueError, match="at least 161x161"):
    structural.ms_ssim(x, anti, weights="equal")


def test_avg_pool_odd_sizes_like_pytorch():
  x = jnp.arange(1.0, 16.0).reshape(1, 3, 5, 1)
  pooled = filters.avg_pool(x, factor=2, odd="pad")
  chex.assert_shape(pooled, (1, 2, 3, 1))
  # avg_pool2d(kernel 2, padding 1, count_include_pad=True): zero row/column first, divide by 4.
  np.testing.assert_allclose(pooled[0, 0, 0, 0], 1.0 / 4)
  np.testing.assert_allclose(pooled[0, 1, 1, 0], (7 + 8 + 12 + 13) / 4)
  chex.assert_shape(filters.avg_pool(x, factor=2), (1, 1, 2, 1))


def test_avg_pool_factor_three_and_its_gradient():
  x, _ = _images((2, 7, 9, 3))
  want = np.asarray(x)[:, :6].reshape(2, 2, 3, 3, 3, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(filters.avg_pool(x, factor=3), want, rtol=1e-6)
  grad = jax.grad(lambda v: jnp.sum(filters.avg_pool(v, factor=3)))(x)
  np.testing.assert_allclose(grad[:, :6], 1 / 9, rtol=1e-6)  # every pooled pixel
  np.testing.assert_array_equal(grad[:, 6:], 0)  # the dropped trailing row


def test_filter_planes_matches_convolution():
  x, _ = _images((2, 13, 17, 3))
  kernel = filters.gaussian_kernel(5, 1.2)
  for padding in ("VALID", "SAME"):

    def ref(x, padding=padding):
      x = filters.filter_1d(x, kernel, axis=1, padding=padding)
      return filters.filter_1d(x, kernel, axis=2, padding=padding)

    def ours(x, padding=padding):
      return filters.filter_separable(x, kernel, padding=padding)

    expected, vjp_ref = jax.vjp(ref, x)
    got, vjp_ours = jax.vjp(jax.jit(ours), x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    ct = jnp.cos(jnp.arange(expected.size).reshape(expected.shape))
    np.testing.assert_allclose(vjp_ours(ct)[0], vjp_ref(ct)[0], rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise():
  x = jnp.zeros((1, 32, 32, 1))
  with pytest.raises(ValueError, match="rank 4"):
    structural.ssim(x[0], x[0])
  with pytest.raises(ValueError, match="same shape"):
    structural.ssim(x, x[:, :16])
  with pytest.raises(ValueError, match="dtype"):
    structural.ssim(x.astype(jnp.uint8), x.astype(jnp.uint8))
  with pytest.raises(ValueError, match="at least 11x11.*smaller filter_size"):
    structural.ssim(x[:, :10], x[:, :10])
  with pytest.raises(ValueError, match="at least 161x161.*fewer weights"):
    structural.ms_ssim(x, x)
  with pytest.raises(ValueError, match="at least 41x41"):
    structural.ms_ssim(x, x, weights=(0.3, 0.3, 0.4))
  with pytest.raises(ValueError, match="odd"):
    structural.ssim(x, x, filter_size=4)
  with pytest.raises(ValueError, match="normalize"):
    structural.ms_ssim(x, x, weights=(1.0,), normalize="none")
  with pytest.raises(ValueError, match="padding"):
    structural.ssim(x, x, padding="same")
  # Small images still work with fewer scales, a smaller window or 'SAME' padding.
  small = jax.eval_shape(lambda x: structural.ms_ssim(x, x, weights=(0.5, 0.5), filter_size=7), x)
  chex.assert_shape(small, (1,))
  tiny = jax.eval_shape(lambda x: structural.ssim(x, x, padding="SAME"), x[:, :8, :8])
  chex.assert_shape(tiny, (1,))


def test_vmap_matches_batch():
  x, y = _images((3, 2, 20, 20, 1))
  per_row = jax.jit(jax.vmap(structural.ssim))(x, y)
  np.testing.assert_allclose(
    per_row,
    structural.ssim(x.reshape(6, 20, 20, 1), y.reshape(6, 20, 20, 1)).reshape(3, 2),
    rtol=1e-6,
  )
  grads = jax.vmap(jax.grad(lambda x, y: structural.ssim(x, y).sum(), argnums=1))(x, y)
  # dm_pix's autodiff gradient of the flattened batch (an independent implementation).
  flat = lambda v: v.reshape(6, 20, 20, 1)
  want = _value_and_grad(dm_pix.ssim, flat(x), flat(y))[1].reshape(x.shape)
  np.testing.assert_allclose(grads, want, rtol=1e-3, atol=1e-6)


def test_sharded_batch_matches_one_device():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  x, y = _images((8, 41, 41, 3))
  xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
  for metric in ("ssim", "ms_ssim_3"):
    f = METRICS[metric]
    expected, expected_grad = _value_and_grad(f, x, y)
    value, grad = _value_and_grad(f, xs, ys)
    # Same numbers up to float32 reduction order (per-shard shapes change XLA's loop tiling).
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-8)
    assert grad.sharding.is_equivalent_to(sharding, grad.ndim)
