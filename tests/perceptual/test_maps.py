"""Spatial maps of the metrics whose values are means or pools over positions: MS-SSIM per scale,
Watson-DCT/DFT per 8x8 block, LPIPS per position (SSIM's and GMS's maps: test_structural.py,
test_gradient.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import perceptual
from perceptual import deep


def _noisy_pair(shape, seed=0, noise=0.1):
  rng = np.random.default_rng(seed)
  x = rng.random(shape)
  return x, np.clip(x + noise * rng.standard_normal(shape), 0.0, 1.0)


def _soft_mask(shape, seed):
  m = np.random.default_rng(seed).random(shape)
  return np.where(m < 0.3, 0.0, m)


@pytest.mark.parametrize("shape", [(2, 45, 50, 3), (1, 22, 25, 27, 2)], ids=["images", "volumes"])
def test_ms_ssim_is_the_weighted_product_of_its_maps_means(shape):
  x, y = (jnp.float32(v) for v in _noisy_pair(shape, seed=19, noise=0.3))
  weights = (0.3, 0.3, 0.4)
  for mask in (None, _soft_mask(shape[:-1], seed=20)):
    maps = perceptual.ms_ssim_maps(x, y, filter_size=5, weights=weights, mask=mask)
    assert [m.shape[-1] for m in maps] == [shape[-1]] * 3 and maps[1].shape[1] == (
      shape[1] + 1
    ) // 2 - 4
    if mask is None:
      means = [jnp.mean(m, axis=tuple(range(1, m.ndim - 1))) for m in maps]  # [B, C]
      expected = jnp.mean(
        np.prod([jnp.maximum(t, 0) ** w for t, w in zip(means, weights, strict=True)], axis=0),
        axis=-1,
      )
      np.testing.assert_allclose(
        perceptual.ms_ssim(x, y, filter_size=5, weights=weights), expected, rtol=2e-6
      )
    else:  # the last scale's map is SSIM's map of the twice-pooled images: finite, at most 1
      assert all(np.isfinite(np.asarray(m)).all() and np.max(m) <= 1.0 for m in maps)


@pytest.mark.parametrize("fn", [perceptual.watson_dct, perceptual.watson_dft])
def test_a_watson_block_map_holds_each_blocks_own_distance(fn):
  x, y = (jnp.float32(v) for v in _noisy_pair((2, 24, 32, 3), seed=21, noise=0.05))
  y = y.at[:, 8:16, 16:24].set(jnp.clip(y[:, 8:16, 16:24] + 0.3, 0, 1))  # one block changed most
  blocks = fn(x, y, per_block=True, luminance="image")
  assert blocks.shape == (2, 3, 4)
  assert np.all(np.argmax(np.asarray(blocks).reshape(2, -1), axis=1) == 1 * 4 + 2)
  # A block's value is the distance of that block alone, under the image's luminance masking:
  # an image of one 8x8 block is its own map.
  one = (slice(None), slice(8, 16), slice(16, 24))
  single = fn(x[one], y[one], per_block=True, luminance="image")[:, 0, 0]
  np.testing.assert_allclose(single, fn(x[one], y[one], luminance="image"), rtol=1e-6)


def test_the_watson_dct_distance_pools_its_block_map():
  # Grey Watson-DCT is (sum over blocks and bins of d)^(1 / beta); the map pools each block's
  # bins: the distance is (sum of map^beta)^(1 / beta).
  x, y = (jnp.float32(v) for v in _noisy_pair((3, 32, 40, 1), seed=22))
  params = perceptual.watson_params("dct", channels=1)
  beta = float(params["beta"])
  blocks = perceptual.watson_dct(x, y, per_block=True)
  pooled = jnp.sum(blocks**beta, axis=(1, 2)) ** (1 / beta)
  np.testing.assert_allclose(pooled, perceptual.watson_dct(x, y), rtol=2e-5)


def test_watson_block_maps_need_the_fixed_grid():
  x = jnp.zeros((1, 16, 16, 1))
  with pytest.raises(ValueError, match="per_block maps the fixed 8x8 grid"):
    perceptual.watson_dft(x, x, per_block=True, key=jax.random.key(0))


def _torch_bilinear(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """PyTorch's `interpolate(mode="bilinear", align_corners=False)` (upsampling) of `[B, h, w]`,
  from its documented coordinate rule: source = (target + 0.5) * in / out - 0.5, clamped at 0."""

  def axis_weights(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(int), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), low] += 1 - frac
    w[np.arange(n_out), high] += frac
    return w

  rows, cols = axis_weights(m.shape[1], size[0]), axis_weights(m.shape[2], size[1])
  return np.einsum("ih,bhw,jw->bij", rows, m, cols)


def test_the_lpips_map_is_the_reference_packages_spatial_map():
  x, y = (jnp.float32(v) for v in _noisy_pair((2, 64, 72, 3), seed=23))
  layers = [
    np.asarray(m, np.float64) for m in deep._lpips_layer_maps(x, y, "alex", None, None, 0.0, "t")
  ]
  expected = sum(_torch_bilinear(m, (64, 72)) for m in layers)
  lpips_map = perceptual.lpips_map(x, y)
  assert lpips_map.shape == (2, 64, 72, 1)
  np.testing.assert_allclose(lpips_map[..., 0], expected, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(
    perceptual.lpips(x, y), sum(m.mean(axis=(1, 2)) for m in layers), rtol=1e-5
  )
  np.testing.assert_array_equal(perceptual.lpips_map(x, x), 0.0)


def test_the_lpips_map_locates_a_local_change():
  x, _ = (jnp.float32(v) for v in _noisy_pair((1, 64, 64, 3), seed=24))
  y = x.at[:, 40:56, 8:24].set(1.0 - x[:, 40:56, 8:24])
  peak = np.unravel_index(np.argmax(perceptual.lpips_map(x, y)[0, ..., 0]), (64, 64))
  assert 36 <= peak[0] < 60 and 4 <= peak[1] < 28
