"""Vertolli & Davies (2017) Table 2 across BEGAN runs, and each run's convergence plot (the
per-run pieces are in `train.began_report`).

    python -m eval.began runs/began_a runs/began_b --out=runs/began_report

References:
  M. O. Vertolli, J. Davies. Image quality assessment techniques show improved training and
  evaluation of autoencoder generative adversarial networks. arXiv:1708.02237, 2017.
"""

import os
import sys
from collections.abc import Mapping

from train import metrics
from train.began_report import distance_table, plot_convergence


def write_report(workdirs: Mapping[str, str], out_dir: str) -> dict[str, str]:
  """Table 2 (one row per run) and one convergence plot per run under `out_dir`."""
  rows, paths = [], {}
  for name, workdir in workdirs.items():
    lines = metrics.read_lines(workdir)
    train = [line for line in lines if "m_global" in line]
    final = train[-1] if train else {}
    rows.append(
      {
        "model": name,
        "steps": final.get("step", 0),
        "final_k": final.get("k", float("nan")),
        "final_m_global": final.get("m_global", float("nan")),
        **distance_table(lines),
      }
    )
    paths[name] = plot_convergence(lines, os.path.join(out_dir, f"{name}_m_global.png"), title=name)
  paths.update(
    metrics.write_table(rows, out_dir, "distances", title="Discriminator errors over training")
  )
  return paths


if __name__ == "__main__":
  args = [a for a in sys.argv[1:] if not a.startswith("--out=")]
  out = next((a.removeprefix("--out=") for a in sys.argv[1:] if a.startswith("--out=")), "report")
  print(write_report({os.path.basename(os.path.normpath(w)): w for w in args}, out))
