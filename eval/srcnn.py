"""Snell et al.'s Table 2 from `train.srcnn` workdirs: PSNR / SSIM of bicubic and each SRCNN.

    python -m eval.srcnn --workdirs=runs/srcnn_srcnn955_mse,runs/srcnn_srcnn955_ms_ssim --out=DIR

Test photos are scikit-image photos never used for training (chelsea, camera, coins, brick by
default), on the Y channel, x`scale` bicubic degradation, `scale` border pixels shaved. DIR gets
superres.{json,md} (one row per photo and method, plus the mean) and superres.png (per photo:
bicubic | each SRCNN | ground truth, a 96 px crop enlarged).
"""

import json
import os

import jax
import numpy as np
from absl import app, flags

from train import images, metrics
from train import srcnn as sr_train

TEST_PHOTOS = ("chelsea", "camera", "coins", "brick")


def evaluate(workdirs: list[str], out: str, *, photos=TEST_PHOTOS, crop: int = 96) -> list[dict]:
  """Scores bicubic and every run on `photos`; writes the table and figure; returns the rows."""
  runs = []
  for workdir in workdirs:
    config, model, state = sr_train.load(workdir)
    runs.append((f"{config.arch}_{config.loss}", config, model, jax.device_get(state.params)))
  scales = {config.scale for _, config, _, _ in runs}
  if len(scales) != 1:
    raise ValueError(f"the runs use different scales {sorted(scales)}; compare one scale.")
  rows, panels = [], []
  for photo in photos:
    result = None
    strip = []
    for name, config, model, params in runs:
      result = sr_train.super_resolve(model, params, photo, scale=config.scale)
      rows.append(
        {"photo": photo, "method": name, "psnr": result["srcnn_psnr"], "ssim": result["srcnn_ssim"]}
      )
      strip.append(result["srcnn"])
    rows.append(
      {
        "photo": photo,
        "method": "bicubic",
        "psnr": result["bicubic_psnr"],
        "ssim": result["bicubic_ssim"],
      }
    )
    h, w = result["truth"].shape[1:3]
    top, left = (h - crop) // 2, (w - crop) // 2
    views = [result["bicubic"], *strip, result["truth"]]
    panels.append(
      np.concatenate([v[0, top : top + crop, left : left + crop] for v in views], axis=1)
    )
  methods = ["bicubic", *(r[0] for r in runs)]
  for method in methods:
    mine = [r for r in rows if r["method"] == method]
    rows.append(
      {
        "photo": "mean",
        "method": method,
        "psnr": float(np.mean([r["psnr"] for r in mine])),
        "ssim": float(np.mean([r["ssim"] for r in mine])),
      }
    )
  os.makedirs(out, exist_ok=True)
  metrics.write_table(rows, out, "superres", title="Super-resolution x4, Y channel (PSNR dB, SSIM)")
  images.save_png(os.path.join(out, "superres.png"), np.concatenate(panels, axis=0), scale=2)
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(
      {"workdirs": workdirs, "columns": ["bicubic", *methods[1:], "truth"], "rows": rows},
      f,
      indent=2,
    )
  return rows


def main(argv: list[str]) -> None:
  del argv
  for row in evaluate(FLAGS.workdirs, FLAGS.out, photos=tuple(FLAGS.photos)):
    print(row)


if __name__ == "__main__":
  flags.DEFINE_list("workdirs", [], "train.srcnn workdirs")
  flags.DEFINE_string("out", "eval_srcnn", "output folder")
  flags.DEFINE_list("photos", list(TEST_PHOTOS), "scikit-image photos (not trained on)")
  FLAGS = flags.FLAGS
  app.run(main)
