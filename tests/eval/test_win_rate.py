"""Tests for eval.win_rate: hand-checked win rates and the Fig. 1 matrix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval import win_rate
from perceptual import pixel


def test_win_rate_hand_checked():
  a = np.array([1.0, 2.0, 3.0, 4.0])
  b = np.array([2.0, 2.0, 1.0, 5.0])
  # A wins images 0 and 3, ties image 1 (half a win), loses image 2.
  assert win_rate.win_rate(a, b) == pytest.approx(2.5 / 4)
  assert win_rate.win_rate(b, a) == pytest.approx(1.5 / 4)
  assert win_rate.win_rate(a, a) == 0.5


def test_win_rate_matrix_hand_checked():
  scores = {
    # Judged by mse, the mse-model wins 3 of 4 images against the ssim-model.
    "mse": {"mse": np.array([1.0, 1.0, 1.0, 5.0]), "ssim": np.array([2.0, 2.0, 2.0, 2.0])},
    # Judged by ssim, the ssim-model wins 1 and ties 1 of 4.
    "ssim": {"mse": np.array([0.1, 0.2, 0.3, 0.4]), "ssim": np.array([0.0, 0.2, 0.9, 0.9])},
  }
  names, w = win_rate.win_rate_matrix(scores)
  assert names == ["mse", "ssim"]
  np.testing.assert_allclose(w, [[0.5, 0.75], [1.5 / 4, 0.5]])
  names, w = win_rate.win_rate_matrix(scores, names=["ssim", "mse"])
  np.testing.assert_allclose(w, [[0.5, 1.5 / 4], [0.75, 0.5]])


def test_score_reconstructions_and_matrix():
  key_x, key_b = jax.random.split(jax.random.key(0))
  x = jax.random.uniform(key_x, (10, 8, 8, 1), minval=0.2, maxval=0.45)
  # Model "mae" makes two errors of 0.5 per image (mae 1/64, mse 0.5/64); model "mse" errs by
  # 0.05 everywhere (mae 0.05, mse 0.0025): each is better under its own loss on every image.
  sparse = jnp.zeros(x.shape).at[:, 2, 3:5].set(0.5)
  dense = 0.05 * jnp.sign(jax.random.normal(key_b, x.shape))
  recons = {"mae": x + sparse, "mse": x + dense}
  losses = {"mae": jax.jit(pixel.mae), "mse": jax.jit(pixel.mse)}
  scores = win_rate.score_reconstructions(x, recons, losses, batch_size=3)
  for loss_name in losses:
    for model_name, y in recons.items():
      ref = np.asarray(losses[loss_name](x, y))
      np.testing.assert_allclose(scores[loss_name][model_name], ref, rtol=1e-6)
      assert scores[loss_name][model_name].shape == (10,)
  names, w = win_rate.win_rate_matrix(scores)
  np.testing.assert_allclose(np.diag(w), 0.5)
  # Each model wins under its own loss on every image.
  np.testing.assert_allclose(w, [[0.5, 1.0], [1.0, 0.5]])


def test_errors():
  with pytest.raises(ValueError, match="same test set"):
    win_rate.win_rate(np.ones(3), np.ones(4))
  with pytest.raises(ValueError, match="missing"):
    win_rate.win_rate_matrix({"a": {"a": np.ones(2)}, "b": {"b": np.ones(2)}})
  x = jnp.zeros((2, 4, 4, 1))
  with pytest.raises(ValueError, match="same test images"):
    win_rate.score_reconstructions(x, {"m": jnp.zeros((3, 4, 4, 1))}, {"mse": pixel.mse})
