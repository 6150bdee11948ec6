"""Tests for perceptual.batching: chunked metrics give the values and gradients of one call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import perceptual
from perceptual import batching


@pytest.fixture
def tiny_chunks(monkeypatch):
  """Chunks of a few images, so that the small test batches are split (and padded).

  The tests run with 8 CPU devices, so a chunk is 8 or 16 images (a multiple of the device count).
  """
  monkeypatch.setattr(batching, "CHUNK_ELEMENTS", 3 * 16 * 16 * 3)


def _pair(batch, channels, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.random((batch, 16, 16, channels)).astype(np.float32)
  y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def _both(f, *args):
  """`f(*args)` evaluated chunked and as one call (chunk as large as the batch)."""
  chunked = f(*args)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(batching, "CHUNK_ELEMENTS", 2**40)
    whole = f(*args)
  return chunked, whole


METRICS = {
  "ssim": perceptual.ssim,
  "ms_ssim": lambda x, y: perceptual.ms_ssim(x, y, weights=(0.5, 0.5), filter_size=5),
  "watson_dft": perceptual.watson_dft,
  "watson_dct": perceptual.watson_dct,
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(METRICS))
def test_chunked_values_and_gradients_match_one_call(tiny_chunks, name, channels):
  # 19 images in chunks of 8 (colour) or 16 (grey), the last one padded.
  x, y = _pair(19, channels)
  metric = METRICS[name]
  weights = jnp.linspace(0.5, 1.5, 19)  # distinct cotangents per image
  loss = lambda x, y: jnp.sum(weights * metric(x, y))
  grad_y = jax.jit(jax.value_and_grad(loss, argnums=1))
  grad_xy = jax.jit(jax.grad(loss, argnums=(0, 1)))
  assert "while" in grad_y.lower(x, y).as_text()  # chunked
  (value, gy), (value_whole, gy_whole) = _both(grad_y, x, y)
  np.testing.assert_allclose(value, value_whole, rtol=1e-6)
  np.testing.assert_allclose(gy, gy_whole, rtol=1e-5, atol=1e-7)
  (gx, gy), (gx_whole, gy_whole) = _both(grad_xy, x, y)
  np.testing.assert_allclose(gx, gx_whole, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gy, gy_whole, rtol=1e-5, atol=1e-7)
  values, values_whole = _both(jax.jit(metric), x, y)
  np.testing.assert_allclose(values, values_whole, rtol=1e-6)


def test_chunked_gradient_of_shared_parameters(tiny_chunks):
  # Fitting Watson's parameters: their gradient is summed over chunks (the recomputing path).
  x, y = _pair(19, 3)
  params = perceptual.watson_params("dft", channels=3)
  loss = lambda p, y: jnp.sum(jnp.arange(1.0, 20.0) * perceptual.watson_dft(x, y, params=p))
  (gp, gy), (gp_whole, gy_whole) = _both(jax.jit(jax.grad(loss, argnums=(0, 1))), params, y)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-8), gp, gp_whole)
  np.testing.assert_allclose(gy, gy_whole, rtol=1e-5, atol=1e-7)


def test_chunked_map_output_and_vmap(tiny_chunks):
  x, y = _pair(17, 3)
  # A per-pixel output (the SSIM map) takes the recomputing backward pass.
  loss = lambda y: jnp.sum(perceptual.ssim_map(x, y) ** 2)
  (value, grad), (value_whole, grad_whole) = _both(jax.jit(jax.value_and_grad(loss)), y)
  np.testing.assert_allclose(value, value_whole, rtol=1e-6)
  np.testing.assert_allclose(grad, grad_whole, rtol=1e-5, atol=1e-7)
  # vmap over batches that are chunked inside.
  rows = jax.jit(jax.vmap(perceptual.ssim))(jnp.stack([x, y]), jnp.stack([y, x]))
  np.testing.assert_allclose(rows, [perceptual.ssim(x, y), perceptual.ssim(y, x)], rtol=1e-6)


def test_sharded_chunked_batch_stays_sharded(tiny_chunks):
  # Chunks interleave the batch, so each device keeps its own images: no gather, same numbers.
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  x, y = _pair(32, 3)
  f = jax.jit(jax.value_and_grad(lambda x, y: jnp.sum(perceptual.ssim(x, y)), argnums=1))
  value, grad = f(jax.device_put(x, sharding), jax.device_put(y, sharding))
  expected, expected_grad = f(x, y)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)  # gradients ~1e-5
  assert grad.sharding.is_equivalent_to(sharding, grad.ndim)


def test_images_per_chunk():
  assert batching.images_per_chunk(128, 64 * 64 * 3, backend="cpu") == 2**15 // (64 * 64 * 3)
  assert batching.images_per_chunk(128, 256 * 256 * 3, backend="cpu") == 1
  assert batching.images_per_chunk(4, 8 * 8, backend="cpu") == 4
  assert batching.images_per_chunk(128, 64 * 64 * 3, backend="gpu") == 128
