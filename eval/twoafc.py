"""2AFC scores of every registry loss per distortion category (Czolbe et al. 2020, Fig. 6).

    python -m eval.twoafc --data=synthetic                  # offline; judges are SYNTHETIC
    python -m eval.twoafc --data=bapps --data_dir=DIR       # BAPPS val (see train.twoafc_data)

Writes `twoafc_scores.json`, `twoafc_scores.md` and `twoafc_scores.png` (bars per category) to
--out. Distances are `d(ref, p)` with the reference first; records are scored in batches of 50
(Watson's default luminance is batch-global, as in the reference's evaluation). The published
column is Czolbe et al.'s mean over BAPPS val (RGB); it is comparable only to a BAPPS run.
"""

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

import perceptual
from perceptual import twoafc
from train import config as config_lib
from train import twoafc_data

# Czolbe et al. (2020), Fig. 6 / WATSON.md: mean 2AFC score over the BAPPS val categories, RGB.
PUBLISHED_BAPPS = {
  "l2": 0.629,
  "ssim": 0.625,
  "watson_dct": 0.626,
  "watson_dft": 0.659,
  "lpips_vgg": 0.694,
  "human": 0.737,
}


def ceiling(split: twoafc_data.Split, categories: tuple[str, ...]) -> dict[str, float]:
  """The best score any metric can reach on these judges, `mean(max(h, 1 - h))` per category."""
  h = np.asarray(split.judge, np.float64)
  return twoafc.score_by_category(np.maximum(h, 1 - h), split.category, names=categories)


def score_losses(
  dataset: twoafc_data.Dataset,
  names: list[str],
  *,
  channels: int,
  batch_size: int = 50,
  params: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
  """Scores registry losses on the dataset's test split.

  Args:
    dataset: a `train.twoafc_data.Dataset`.
    names: registry names (or extra names present in `params`, see below).
    channels: channels of the dataset's images.
    batch_size: records per metric call.
    params: optional name -> params overriding the registry defaults; a name of the form
      "<loss>@<label>" scores registry loss <loss> with those params (e.g. fitted ones).

  Returns:
    name -> {category: score, "mean": mean over categories}. Losses whose weights are not on
    this machine are skipped with a warning.
  """
  params = dict(params or {})
  results = {}
  for name in names:
    loss = perceptual.LOSSES[name.split("@")[0]]
    if channels not in loss.channels:
      continue
    try:
      p = params[name] if name in params else loss.params(channels)
    except FileNotFoundError as e:
      logging.warning("2AFC: %s skipped: %s", name, e)
      continue
    fn = lambda x, y, loss=loss, p=p: loss(x, y, params=p)
    d0, d1 = twoafc_data.distances(fn, dataset.test, batch_size=batch_size)
    results[name] = twoafc_data.category_scores(d0, d1, dataset.test, dataset.categories)
  return results


def markdown(results: Mapping[str, Mapping[str, float]], *, title: str, published: bool) -> str:
  """A Markdown table: one row per metric, one column per category, the mean, the paper's."""
  cats = [c for c in next(iter(results.values())) if c != "mean"]
  head = ["metric", *cats, "mean", *(["Czolbe et al. BAPPS mean"] if published else [])]
  lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for name, row in results.items():
    ref = PUBLISHED_BAPPS.get("human" if name.startswith("ceiling") else name)
    extra = [f"{ref:.3f}" if ref is not None else ""] if published else []
    cells = [f"{row.get(c, float('nan')):.3f}" for c in (*cats, "mean")]
    lines.append("| " + " | ".join([name, *cells, *extra]) + " |")
  return "\n".join(lines) + "\n"


def bar_chart(results: Mapping[str, Mapping[str, float]], path: str, *, title: str) -> str:
  """Grouped bars: categories on the x axis, one bar per metric (Fig. 6 style)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cats = [*[c for c in next(iter(results.values())) if c != "mean"], "mean"]
  width = 0.8 / len(results)
  fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cats)), 3.5))
  for i, (name, row) in enumerate(results.items()):
    ax.bar(np.arange(len(cats)) + i * width, [row[c] for c in cats], width, label=name)
  ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, cats)
  ax.set_ylim(0.4, 1.0)
  ax.set_ylabel("2AFC score")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, ncol=4, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


@dataclasses.dataclass(frozen=True)
class Config:
  data: str = config_lib.choice("synthetic", ("synthetic", "bapps"), "2AFC data")
  data_dir: str = config_lib.documented("", "BAPPS folder holding 2afc/ (or $BAPPS_DIR)")
  channels: int = 3
  losses: str = config_lib.documented("", "comma-separated registry names; default all")
  num_test: int = config_lib.documented(500, "synthetic held-out records")
  batch_size: int = 50
  out: str = config_lib.documented("", "output folder; default runs/twoafc_<data>")


def main(config: Config) -> dict[str, dict[str, float]]:
  """Scores the losses, writes JSON / Markdown / PNG, returns the table."""
  dataset = twoafc_data.load(
    config.data, channels=config.channels, num_train=1, num_test=config.num_test,
    data_dir=config.data_dir or None,
  )  # fmt: skip
  names = config.losses.split(",") if config.losses else list(perceptual.LOSSES)
  results = score_losses(dataset, names, channels=config.channels, batch_size=config.batch_size)
  label = "ceiling (rule)" if dataset.synthetic else "ceiling (majority)"
  results[label] = ceiling(dataset.test, dataset.categories)
  title = f"2AFC scores on {dataset.name}, {len(dataset.test)} held-out records"
  out = config.out or os.path.join("runs", f"twoafc_{config.data}")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "twoafc_scores.json"), "w") as f:
    json.dump({"data": dataset.name, "synthetic": dataset.synthetic, "scores": results,
               "published_bapps_mean": PUBLISHED_BAPPS}, f, indent=2)  # fmt: skip
  table = markdown(results, title=title, published=True)
  with open(os.path.join(out, "twoafc_scores.md"), "w") as f:
    f.write(table)
  bar_chart(results, os.path.join(out, "twoafc_scores.png"), title=title)
  print(table)
  return results


if __name__ == "__main__":
  config_lib.run(Config, main)
