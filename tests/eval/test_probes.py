"""Tests for eval.probes on synthetic codes with known answers."""

import numpy as np
import pytest

from eval import probes


def _clusters(rng, centres, n, spread=0.3):
  labels = rng.integers(0, len(centres), n)
  return centres[labels] + spread * rng.normal(size=(n, centres.shape[1])), labels


def test_svm_separable_data():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 16)) * 3.0  # ~17 apart, noise 0.3 per dimension
  x_train, y_train = _clusters(rng, centres, 300)
  x_test, y_test = _clusters(rng, centres, 100)
  result = probes.linear_svm_error(x_train, y_train, x_test, y_test)
  assert result.value == 0.0 and result.param == 1.0


def test_svm_cross_validation_and_chance():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(240, 8)), rng.integers(0, 2, 240)
  result = probes.linear_svm_error(
    x[:160], y[:160], x[160:], y[160:], c_values=(0.01, 1.0), folds=3
  )
  assert result.param in (0.01, 1.0)
  # Labels independent of the codes: error near chance (1/2).
  assert 0.3 < result.value < 0.7


def test_ridge_linear_targets():
  rng = np.random.default_rng(2)
  codes = rng.choice([-1.0, 1.0], size=(400, 32))
  weights = rng.normal(size=(32, 2))
  targets = codes @ weights + 0.01 * rng.normal(size=(400, 2))
  result = probes.ridge_mse(
    codes[:300], targets[:300], codes[300:], targets[300:], alphas=(1e-3, 1.0)
  )
  assert result.value < 1e-3
  assert result.param in (1e-3, 1.0)
  # Against the variance of the targets (what predicting the mean would cost).
  assert result.value < 1e-3 * targets.var()
  one_d = probes.ridge_mse(codes[:300], targets[:300, 0], codes[300:], targets[300:, 0])
  assert one_d.value < 1e-2


def test_errors():
  with pytest.raises(ValueError, match="codes"):
    probes.ridge_mse(np.ones(4), np.ones(4), np.ones((2, 1)), np.ones(2))
