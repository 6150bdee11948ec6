"""Tests for perceptual.batching: chunked metrics give the values and gradients of each image alone.

The chunked program is compared with an independent one: every image scored as a batch of one
(below any chunk, so a plain call). `CHUNK_ELEMENTS` is read when a function is traced, and
`jax.jit` caches traces by function and argument types, not by module globals: every test builds
its jitted functions after the fixture has set the chunk size, and asserts that the program it
checks is chunked (a `while` loop in its StableHLO for CPU; on other platforms the same values
come from the unchunked program).
"""

import functools

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


@pytest.fixture
def float64():
  """Comparisons in float64: two float32 compilations round differently, and Watson's gradient
  near a small coefficient difference (the slope of `|A0 - A1| ** beta`, beta < 1) amplifies
  that to ~1 % on random images. In float64 chunked and per-image agree to ~1e-12, so an error
  of 1e-6 in a chunk fails."""
  with jax.enable_x64(True):
    yield


def _pair(batch, channels, seed=0, dtype=None):
  rng = np.random.default_rng(seed)
  x = rng.random((batch, 16, 16, channels))
  y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
  dtype = dtype or jnp.result_type(float)  # float64 under the fixture
  return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def _assert_close(actual, desired):
  desired = np.asarray(desired)
  np.testing.assert_allclose(actual, desired, rtol=1e-9, atol=1e-12 * np.abs(desired).max())


def _is_chunked(jitted, *args):
  """Whether the program lowered for CPU (the only chunked one) loops over chunks."""
  return "stablehlo.while" in jitted.trace(*args).lower(lowering_platforms=("cpu",)).as_text()


# Watson with per-image luminance: with the reference's batch mean an image's value depends on its
# batch, and a batch of one would not be an independent check of the same numbers.
METRICS = {
  "ssim": perceptual.ssim,
  "ms_ssim": functools.partial(perceptual.ms_ssim, weights=(0.5, 0.5), filter_size=5),
  "watson_dft": functools.partial(perceptual.watson_dft, luminance="image"),
  "watson_dct": functools.partial(perceptual.watson_dct, luminance="image"),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(METRICS))
def test_chunked_values_and_gradients_match_each_image_alone(tiny_chunks, float64, name, channels):
  # 19 images in chunks of 8 (colour) or 16 (grey), the last one padded.
  x, y = _pair(19, channels)
  metric = METRICS[name]
  weights = jnp.linspace(0.5, 1.5, 19)  # distinct cotangents per image
  loss = lambda x, y, w: jnp.sum(w * metric(x, y))
  values = jax.jit(lambda x, y: metric(x, y))
  grad_y = jax.jit(jax.value_and_grad(loss, argnums=1))
  grad_xy = jax.jit(jax.grad(loss, argnums=(0, 1)))
  assert all(_is_chunked(f, x, y, weights) for f in (grad_y, grad_xy))
  assert _is_chunked(values, x, y)
  one = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # batch of one: a plain call
  assert not _is_chunked(one, x[:1], y[:1], weights[:1])
  alone = [one(x[i : i + 1], y[i : i + 1], weights[i : i + 1]) for i in range(19)]
  want_value = sum(v for v, _ in alone)
  want_gx = jnp.concatenate([g[0] for _, g in alone])
  want_gy = jnp.concatenate([g[1] for _, g in alone])
  want_values = jnp.stack([v for v, _ in alone]) / weights

  value, gy = grad_y(x, y, weights)
  _assert_close(value, want_value)
  _assert_close(gy, want_gy)
  gx, gy = grad_xy(x, y, weights)
  _assert_close(gx, want_gx)
  _assert_close(gy, want_gy)
  _assert_close(values(x, y), want_values)


def test_chunked_gradient_of_shared_parameters(tiny_chunks, float64):
  # Fitting Watson's parameters: their gradient is summed over chunks (the recomputing path).
  x, y = _pair(19, 3)
  params = jax.tree.map(lambda v: v.astype(x.dtype), perceptual.watson_params("dft", channels=3))
  dft = lambda x, y, p: perceptual.watson_dft(x, y, params=p, luminance="image")
  loss = lambda p, y, x, w: jnp.sum(w * dft(x, y, p))
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  weights = jnp.arange(1.0, 20.0)
  assert _is_chunked(grad, params, y, x, weights)
  gp, gy = grad(params, y, x, weights)
  alone = [grad(params, y[i : i + 1], x[i : i + 1], weights[i : i + 1]) for i in range(19)]
  want_gp = jax.tree.map(lambda *g: sum(g), *[g for g, _ in alone])
  jax.tree.map(_assert_close, gp, want_gp)
  _assert_close(gy, jnp.concatenate([g for _, g in alone]))


def test_chunked_map_output_and_vmap(tiny_chunks, float64):
  x, y = _pair(17, 3)
  # A per-pixel output (the SSIM map) takes the recomputing backward pass.
  loss = lambda y, x: jnp.sum(perceptual.ssim_map(x, y) ** 2)
  value_and_grad = jax.jit(jax.value_and_grad(loss))
  assert _is_chunked(value_and_grad, y, x)
  value, grad = value_and_grad(y, x)
  one = jax.jit(jax.value_and_grad(loss))
  alone = [one(y[i : i + 1], x[i : i + 1]) for i in range(17)]
  _assert_close(value, sum(v for v, _ in alone))
  _assert_close(grad, jnp.concatenate([g for _, g in alone]))
  # vmap over batches that are chunked inside.
  rows = jax.jit(jax.vmap(lambda a, b: perceptual.ssim(a, b)))(jnp.stack([x, y]), jnp.stack([y, x]))
  single = jax.jit(lambda a, b: perceptual.ssim(a, b))
  want = [[single(a[i : i + 1], b[i : i + 1])[0] for i in range(17)] for a, b in ((x, y), (y, x))]
  _assert_close(rows, want)


def test_sharded_chunked_batch_stays_sharded(tiny_chunks, float64):
  # Chunks interleave the batch, so each device keeps its own images: no gather, same numbers.
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  x, y = _pair(32, 3)
  f = jax.jit(jax.value_and_grad(lambda x, y: jnp.sum(perceptual.ssim(x, y)), argnums=1))
  assert _is_chunked(f, x, y)
  value, grad = f(jax.device_put(x, sharding), jax.device_put(y, sharding))
  alone = [f(x[i : i + 1], y[i : i + 1]) for i in range(32)]
  _assert_close(value, sum(v for v, _ in alone))
  _assert_close(grad, jnp.concatenate([g for _, g in alone]))
  assert grad.sharding.is_equivalent_to(sharding, grad.ndim)


def test_default_chunks_split_a_training_batch():
  # The path every CPU user is on: 128 grey 64x64 images are evaluated in chunks.
  x = jnp.zeros((128, 64, 64, 1))
  f = jax.jit(jax.grad(lambda y, x: jnp.sum(perceptual.watson_dft(x, y))))
  assert _is_chunked(f, x, x)


def test_images_per_chunk():
  assert batching.images_per_chunk(128, 64 * 64 * 3) == 2**15 // (64 * 64 * 3)
  assert batching.images_per_chunk(128, 256 * 256 * 3) == 1
  assert batching.images_per_chunk(4, 8 * 8) == 4
