"""Win rates between models trained with different losses (Ridgeway et al. Fig. 1).

Models are named by the loss they were trained with. Every model's reconstructions are scored with
every loss; the X-model "wins" on an image under loss X when its loss there is lower than the
Y-model's. Scores are losses (lower is better), `[N]` per (loss, model), as the loss registry of
`perceptual/` returns them.

References:
  Ridgeway, Snell, Roads, Zemel, Mozer. Learning to generate images with perceptual similarity
  metrics. arXiv:1511.06409v1 (2015), Fig. 1.
"""

from collections.abc import Callable, Mapping

import jax
import numpy as np


def win_rate(losses_a: np.ndarray, losses_b: np.ndarray) -> float:
  """Share of images on which model A has the lower loss; a tie counts as half a win.

  With ties split, `win_rate(a, b) + win_rate(b, a) == 1`.

  Args:
    losses_a: `[N]` losses of model A's reconstructions.
    losses_b: `[N]` losses of model B's reconstructions of the same images, same loss.

  Returns:
    The win rate of A over B in `[0, 1]`.
  """
  a, b = np.asarray(losses_a, np.float64), np.asarray(losses_b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise ValueError(
      f"win_rate takes two non-empty [N] loss vectors over the same images, got {a.shape} and "
      f"{b.shape}. Score both models on the same test set."
    )
  return float(np.mean(np.where(a < b, 1.0, np.where(a == b, 0.5, 0.0))))


def score_reconstructions(
  x: jax.Array,
  reconstructions: Mapping[str, jax.Array],
  losses: Mapping[str, Callable[[jax.Array, jax.Array], jax.Array]],
  *,
  batch_size: int = 256,
) -> dict[str, dict[str, np.ndarray]]:
  """Scores every model's reconstructions with every loss, in batches.

  Args:
    x: reference images `[N, H, W, C]` in `[0, 1]`.
    reconstructions: model name -> reconstructions `[N, H, W, C]` in `[0, 1]` (map tanh outputs
      with `models.autoencoder.to_unit_range` first).
    losses: loss name -> `loss(x, y) -> [B]`, lower is better (e.g. entries of the registry).
    batch_size: images per loss call (bounds memory; jit the losses for speed).

  Returns:
    `scores[loss_name][model_name]`, `[N]` float64 numpy arrays.
  """
  n = x.shape[0]
  for name, y in reconstructions.items():
    if y.shape != x.shape:
      raise ValueError(
        f"reconstructions[{name!r}] has shape {y.shape}, the references {x.shape}; reconstruct "
        "the same test images with every model."
      )
  scores: dict[str, dict[str, np.ndarray]] = {}
  for loss_name, loss in losses.items():
    scores[loss_name] = {}
    for model_name, y in reconstructions.items():
      parts = [
        np.asarray(loss(x[i : i + batch_size], y[i : i + batch_size]), np.float64)
        for i in range(0, n, batch_size)
      ]
      scores[loss_name][model_name] = np.concatenate(parts)
  return scores


def win_rate_matrix(
  scores: Mapping[str, Mapping[str, np.ndarray]], *, names: list[str] | None = None
) -> tuple[list[str], np.ndarray]:
  """Ridgeway et al.'s Fig. 1: `W[i, j]` = win rate of the model trained with loss i over the model
  trained with loss j, judged by loss i.

  Args:
    scores: `scores[loss][model]` as returned by `score_reconstructions`, where each model is
      named by its training loss (so `scores[name][name]` exists for every name).
    names: the losses/models to compare, in order; all keys of `scores` by default.

  Returns:
    `(names, W)`, `W` of shape `[len(names), len(names)]` with entries in `[0, 1]` and 0.5 on the
    diagonal. `W[i, j] > 0.5` means the loss-i model beats the loss-j model by its own criterion;
    the comparison of the same pair under loss j is `W[j, i]`.
  """
  names = list(scores) if names is None else list(names)
  missing = [(i, j) for i in names for j in names if j not in scores.get(i, {})]
  if missing:
    raise ValueError(
      f"win_rate_matrix needs scores[loss][model] for every pair of {names}; missing "
      f"{missing[:4]}. Score every model with every loss (score_reconstructions)."
    )
  w = np.array([[win_rate(scores[i][i], scores[i][j]) for j in names] for i in names])
  return names, w
