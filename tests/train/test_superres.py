"""Tests for train.superres: bicubic degradation and aligned SR training crops."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import superres


def _coordinate_images(batch, height, width):
  """Images whose pixels are all distinct, so a crop's position can be recovered."""
  values = np.arange(batch * height * width, dtype=np.float32) / (batch * height * width)
  return jnp.asarray(values.reshape(batch, height, width, 1))


def test_modcrop():
  x = jnp.zeros((2, 35, 42, 1))
  assert superres.modcrop(x, scale=4).shape == (2, 32, 40, 1)
  assert superres.modcrop(x, scale=7).shape == (2, 35, 42, 1)


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (1, 33, 33, 1), (3, 40, 24, 3)])
def test_bicubic_degrade_shape_and_range(shape):
  x = jax.random.uniform(jax.random.key(0), shape)
  y = jax.jit(functools.partial(superres.bicubic_degrade, scale=4))(x)
  chex.assert_shape(y, shape)
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
  # Degradation removes detail: the result is far from random input, but keeps its mean.
  assert float(jnp.mean((y - x) ** 2)) > 1e-3
  np.testing.assert_allclose(y.mean(), x.mean(), atol=0.05)


def test_bicubic_degrade_properties():
  degrade = jax.jit(superres.bicubic_degrade, static_argnames=("scale", "antialias", "clip"))
  flat = jnp.full((1, 32, 32, 1), 0.3)
  np.testing.assert_allclose(degrade(flat, scale=4), 0.3, atol=1e-6)
  # A smooth image survives almost unchanged away from the borders.
  t = jnp.linspace(0.0, 1.0, 64)
  smooth = (0.5 + 0.4 * jnp.sin(2 * jnp.pi * t)[:, None] * jnp.cos(2 * jnp.pi * t)[None])[
    None, :, :, None
  ]
  out = degrade(smooth, scale=4)
  np.testing.assert_allclose(out[:, 8:-8, 8:-8], smooth[:, 8:-8, 8:-8], atol=0.02)
  # Antialiasing low-passes before decimation: stripes of period 4 (rows 1, 2 of every 4 bright)
  # average to their mean 0.5 with it; without it the decimation samples land between the two
  # bright rows (JAX samples at pixel centres) and alias the stripes to a bright flat image.
  rows = (jnp.arange(32) % 4 == 1) | (jnp.arange(32) % 4 == 2)
  stripes = jnp.broadcast_to(rows[:, None], (32, 32)).astype(jnp.float32)[None, :, :, None]
  aa = degrade(stripes, scale=4, antialias=True)
  no_aa = degrade(stripes, scale=4, antialias=False)
  np.testing.assert_allclose(aa[:, 4:-4, 4:-4], 0.5, atol=0.05)
  np.testing.assert_allclose(no_aa, 1.0, atol=1e-6)


def test_random_crops_are_subimages():
  images = _coordinate_images(3, 20, 24)
  crops = jax.jit(functools.partial(superres.random_crops, size=7, num_crops=16))(
    jax.random.key(1), images
  )
  chex.assert_shape(crops, (16, 7, 7, 1))
  flat = np.asarray(images).ravel()
  for crop in np.asarray(crops):
    b, r, c = np.unravel_index(np.flatnonzero(flat == crop[0, 0, 0])[0], (3, 20, 24))
    np.testing.assert_array_equal(crop, np.asarray(images)[b, r : r + 7, c : c + 7])


def test_sr_training_pairs_are_aligned():
  images = _coordinate_images(2, 41, 38)
  pairs = jax.jit(functools.partial(superres.sr_training_pairs, scale=4, size=9, num_crops=8))
  inputs, targets = pairs(jax.random.key(2), images)
  chex.assert_shape((inputs, targets), (8, 9, 9, 1))
  high = np.asarray(superres.modcrop(images, scale=4))  # [2, 40, 36, 1]
  low = np.asarray(superres.bicubic_degrade(jnp.asarray(high), scale=4))
  flat = high.ravel()
  for x, y in zip(np.asarray(inputs), np.asarray(targets), strict=True):
    b, r, c = np.unravel_index(np.flatnonzero(flat == y[0, 0, 0])[0], high.shape[:3])
    np.testing.assert_array_equal(y, high[b, r : r + 9, c : c + 9])
    np.testing.assert_allclose(x, low[b, r : r + 9, c : c + 9], atol=1e-6)


def test_shave():
  x = jnp.zeros((1, 33, 33, 1))
  assert superres.shave(x, border=8).shape == (1, 17, 17, 1)
  assert superres.shave(x, border=0).shape == x.shape


def test_errors():
  with pytest.raises(ValueError, match="at least 4x4"):
    superres.bicubic_degrade(jnp.zeros((1, 3, 3, 1)), scale=4)
  with pytest.raises(ValueError, match="smaller crop size"):
    superres.random_crops(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), size=9, num_crops=1)
