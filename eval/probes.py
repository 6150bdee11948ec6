"""Linear probes on bottleneck codes (Snell et al. Table 1).

A linear SVM classifies the codes (classification error, e.g. STL-10 classes) and a ridge model
regresses continuous attributes from them (mean squared error, e.g. the lighting direction of
Extended Yale B faces). Both standardise the codes (zero mean, unit variance on the training set)
and may choose their regularisation strength by k-fold cross-validation on the training codes.
Codes are `[N, D]` numpy or JAX arrays; everything runs in scikit-learn on the CPU.

References:
  Snell, Ridgeway, Liao, Roads, Mozer, Zemel. Learning to generate images with perceptual
  similarity metrics. ICIP 2017, Table 1.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC


class ProbeResult(NamedTuple):
  """A probe's test score and the regularisation strength it used."""

  value: float  # classification error in [0, 1], or mean squared error
  param: float  # the SVM's C, or the ridge's alpha


def _as_features(codes, name: str) -> np.ndarray:
  codes = np.asarray(codes, np.float64)
  if codes.ndim != 2:
    raise ValueError(
      f"{name} must be codes [N, D], got shape {codes.shape}; flatten with .reshape(N, -1)."
    )
  return codes


def linear_svm_error(
  train_codes,
  train_labels,
  test_codes,
  test_labels,
  *,
  c_values: Sequence[float] = (1.0,),
  folds: int = 3,
  seed: int = 0,
) -> ProbeResult:
  """Test classification error of a linear SVM (one-vs-rest, squared hinge) trained on codes.

  Args:
    train_codes: `[N, D]` training codes.
    train_labels: `[N]` integer class labels.
    test_codes: `[M, D]` test codes.
    test_labels: `[M]` labels.
    c_values: candidate inverse regularisation strengths C; with more than one, C is chosen by
      stratified `folds`-fold cross-validated accuracy on the training codes.
    folds: number of cross-validation folds.
    seed: seed of the fold shuffling and of the solver.

  Returns:
    `ProbeResult(error, C)`, error in `[0, 1]`.
  """
  x_train, x_test = _as_features(train_codes, "train_codes"), _as_features(test_codes, "test_codes")
  svm = make_pipeline(StandardScaler(), LinearSVC(max_iter=20_000, random_state=seed))
  if len(c_values) > 1:
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    svm = GridSearchCV(svm, {"linearsvc__C": list(c_values)}, cv=cv)
  else:
    svm.set_params(linearsvc__C=c_values[0])
  svm.fit(x_train, np.asarray(train_labels))
  error = float(np.mean(svm.predict(x_test) != np.asarray(test_labels)))
  c = svm.best_params_["linearsvc__C"] if len(c_values) > 1 else c_values[0]
  return ProbeResult(error, float(c))


def ridge_mse(
  train_codes,
  train_targets,
  test_codes,
  test_targets,
  *,
  alphas: Sequence[float] = (1.0,),
) -> ProbeResult:
  """Test mean squared error of ridge regression from codes to targets.

  Args:
    train_codes: `[N, D]` training codes.
    train_targets: `[N]` or `[N, T]` real targets.
    test_codes: `[M, D]` test codes.
    test_targets: `[M]` or `[M, T]`.
    alphas: candidate L2 penalties; with more than one, alpha is chosen by efficient
      leave-one-out cross-validation on the training codes (`RidgeCV`).

  Returns:
    `ProbeResult(mse, alpha)`: the MSE averaged over test examples and target dimensions.
  """
  x_train, x_test = _as_features(train_codes, "train_codes"), _as_features(test_codes, "test_codes")
  ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas)))
  ridge.fit(x_train, np.asarray(train_targets, np.float64))
  pred = ridge.predict(x_test)
  mse = float(np.mean(np.square(pred - np.asarray(test_targets, np.float64).reshape(pred.shape))))
  return ProbeResult(mse, float(ridge[-1].alpha_))
