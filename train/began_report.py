"""What a BEGAN run writes about itself (Vertolli & Davies, 2017): its distance table, convergence
plot and similarity maps.

From the run's metrics.jsonl (`train.began` logs every distance of the discriminator's
reconstructions of real and generated images at each logged step):
- `distance_table`: mean and standard deviation of each distance over training (their Table 2);
- `plot_convergence`: the convergence measure M_global and k_t over training.
From images and their autoencoded versions D(x):
- `save_similarity_maps`: gradient-magnitude similarity and chrominance similarity maps of
  originals vs reconstructions (their Figs. 3-4), bright where the reconstruction agrees.
`eval.began` tabulates several runs.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from perceptual import gradient
from train import images

DISTANCES = ("l1", "gmsm", "chroma")  # metric suffixes logged by train.began


def distance_table(lines: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Mean and std over the logged training steps of each `real_<d>` / `fake_<d>` distance.

  Returns:
    `{"real_l1_mean": ..., "real_l1_std": ..., "fake_l1_mean": ...}` for every distance logged.
  """
  row = {}
  for source in ("real", "fake"):
    for name in DISTANCES:
      values = [line[f"{source}_{name}"] for line in lines if f"{source}_{name}" in line]
      if values:
        row[f"{source}_{name}_mean"] = float(np.mean(values))
        row[f"{source}_{name}_std"] = float(np.std(values))
  return row


def plot_convergence(lines: Sequence[Mapping[str, Any]], path: str, *, title: str = "") -> str:
  """M_global (left axis) and k_t (right axis) against the training step; returns `path`."""
  train = [line for line in lines if "m_global" in line]
  steps = [line["step"] for line in train]
  fig = Figure(figsize=(6.0, 3.6))
  ax = fig.add_subplot()
  ax.plot(steps, [line["m_global"] for line in train], color="tab:blue", label="M_global")
  ax.set_xlabel("step")
  ax.set_ylabel("M_global", color="tab:blue")
  ax.grid(alpha=0.3)
  k_axis = ax.twinx()
  k_axis.plot(steps, [line["k"] for line in train], color="tab:red", label="k_t")
  k_axis.set_ylabel("k_t", color="tab:red")
  ax.set_title(title or "BEGAN convergence")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  return path


def similarity_maps(x: jax.Array, y: jax.Array) -> dict[str, np.ndarray]:
  """GMS map (upsampled 2x to the image size) and, for RGB, the chrominance map, in [0, 1]."""
  gms = gradient.gms_map(x, y)
  gms = jnp.repeat(jnp.repeat(gms, 2, axis=1), 2, axis=2)[:, : x.shape[1], : x.shape[2]]
  maps = {"gms": np.asarray(gms)}
  if x.shape[-1] == 3:  # negative similarity (opposite hue) shown as black
    maps["chroma"] = np.clip(np.asarray(gradient.chroma_similarity_map(x, y)), 0.0, 1.0)
  return maps


def save_similarity_maps(path: str, x: np.ndarray, y: np.ndarray, *, scale: int = 2) -> str:
  """Rows: originals, reconstructions, GMS map, chrominance map (RGB only); returns `path`.

  Args:
    path: PNG to write.
    x: originals `[N, H, W, C]` in `[0, 1]`.
    y: their reconstructions D(x), same shape (clipped to `[0, 1]` for display).
    scale: nearest-neighbour upscaling of the saved grid.
  """
  y = np.clip(y, 0.0, 1.0)
  maps = similarity_maps(jnp.asarray(x), jnp.asarray(y))
  channels = x.shape[-1]
  rows = [x, y] + [np.repeat(m, channels, axis=-1) for m in maps.values()]
  return images.save_grid(path, np.concatenate(rows), columns=len(x), scale=scale)
