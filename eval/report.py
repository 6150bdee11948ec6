"""Figures (PNG) and tables of the evaluation results (tables via `train.metrics.write_table`).

Every writer creates its output folder, overwrites files of the same name and returns the paths
it wrote. Figures use matplotlib's object API (`Figure`, Agg canvas), so no pyplot state or
display is involved.
"""

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from train.metrics import write_table


def plot_win_rates(names: Sequence[str], matrix: np.ndarray, path: str, *, title: str = "") -> str:
  """Heat map of a win-rate matrix (`eval.win_rate.win_rate_matrix`), annotated in percent.

  Row i, column j: how often the model trained with loss i beats the loss-j model under loss i.
  """
  matrix = np.asarray(matrix)
  n = len(names)
  fig = Figure(figsize=(1.2 + 0.9 * n, 1.0 + 0.8 * n))
  ax = fig.add_subplot()
  image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="RdBu")
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f"{100 * matrix[i, j]:.0f}", ha="center", va="center", fontsize=9)
  ax.set_xticks(range(n), names, rotation=45, ha="right")
  ax.set_yticks(range(n), names)
  ax.set_xlabel("opponent (trained with)")
  ax.set_ylabel("model trained with = judging loss")
  ax.set_title(title or "win rate (%)")
  fig.colorbar(image, ax=ax)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=120)
  return path


def plot_precision_at_k(curves: Mapping[str, np.ndarray], path: str, *, title: str = "") -> str:
  """Precision at k = 1..K of Hamming retrieval, one line per model (Ridgeway et al. Fig. 4)."""
  fig = Figure(figsize=(5.0, 3.6))
  ax = fig.add_subplot()
  for label, curve in curves.items():
    curve = np.asarray(curve)
    ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", label=label)
  ax.set_xlabel("k (neighbours)")
  ax.set_ylabel("precision at k")
  ax.set_title(title or "retrieval with binary codes")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=120)
  return path


def write_win_rate_report(
  names: Sequence[str], matrix: np.ndarray, out_dir: str, *, name: str = "win_rates"
) -> dict[str, str]:
  """Writes the win-rate matrix as a table (`.json`, `.md`) and a heat map (`.png`)."""
  rows = [
    {"trained_with": a, **{f"vs_{b}": float(matrix[i, j]) for j, b in enumerate(names)}}
    for i, a in enumerate(names)
  ]
  paths = write_table(rows, out_dir, name, title="Win rate of row model over column model")
  paths["png"] = plot_win_rates(names, matrix, os.path.join(out_dir, f"{name}.png"))
  return paths


def write_retrieval_report(
  curves: Mapping[str, np.ndarray], out_dir: str, *, name: str = "retrieval"
) -> dict[str, str]:
  """Writes precision-at-k curves as a table (`.json`, `.md`) and a line plot (`.png`)."""
  rows = [
    {"model": label, **{f"p@{j + 1}": float(v) for j, v in enumerate(np.asarray(curve))}}
    for label, curve in curves.items()
  ]
  paths = write_table(rows, out_dir, name, title="Hamming retrieval: precision at k")
  paths["png"] = plot_precision_at_k(curves, os.path.join(out_dir, f"{name}.png"))
  return paths
