"""The papers' evaluations of autoencoders trained with different losses, from their workdirs.

    python -m eval.autoencoders --workdirs=runs/ae_conv256_l2,runs/ae_conv256_ssim --out=DIR

Each workdir is a `train.autoencoder` run (its best checkpoint is used); the models must share a
dataset and image shape and are named by their training loss. DIR gets:

- win_rates.{json,md,png} (Ridgeway et al. Fig. 1): on the test split, the share of images on
  which the loss-X model beats the loss-Y model under loss X;
- retrieval.{json,md,png} (Ridgeway et al. Fig. 4): test images query the training images by the
  Hamming distance of their codes; precision at k = 1..10 (continuous codes are binarised by sign);
- probes.{json,md} (Snell et al. Table 1): linear SVM classification error on the codes (trained
  on training-image codes, scored on the test split) and, since the offline datasets have no
  continuous attributes, the ridge MSE of predicting a 4x4 thumbnail of the image (our stand-in
  for Snell et al.'s lighting regression);
- reconstructions.png: the same test images (top row) reconstructed by each model (rows);
- summary.json with everything.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

import perceptual
from eval import probes, report, retrieval, win_rate
from models import autoencoder as ae
from train import autoencoder as ae_train
from train import images, metrics


@dataclasses.dataclass(frozen=True)
class Trained:
  """A trained run: its name (training loss), config, model and parameters."""

  name: str
  config: ae_train.Config
  model: Any
  params: Any


def load_runs(workdirs: list[str]) -> list[Trained]:
  """Loads the best checkpoint of each workdir; checks they are comparable."""
  runs = []
  for workdir in workdirs:
    config, model, state = ae_train.load(workdir)
    runs.append(Trained(config.loss, config, model, jax.device_get(state.params)))
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"the runs must be trained with different losses to be compared, got {names}.")
  setups = {
    (r.config.dataset, r.model.image_shape, r.config.validation, r.config.seed) for r in runs
  }
  if len(setups) > 1:
    raise ValueError(f"the runs use different data {sorted(setups)}; compare runs on one dataset.")
  return runs


def apply_in_batches(run: Trained, x: np.ndarray, *, batch_size: int = 500):
  """`(reconstructions [N, H, W, C] in [0, 1], codes [N, D])` of images `x` in [0, 1]."""
  model = run.model

  @jax.jit
  def both(params, x):
    codes = model.apply({"params": params}, ae.from_unit_range(x), method="encode")
    return ae.to_unit_range(model.apply({"params": params}, codes, method="decode")), codes

  parts = [both(run.params, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
  return tuple(np.concatenate([np.asarray(p[j]) for p in parts]) for j in (0, 1))


def thumbnails(x: np.ndarray, *, side: int = 4) -> np.ndarray:
  """`[N, side * side * C]` block means of `[N, H, W, C]` images (the ridge probe's targets)."""
  n, h, w, c = x.shape
  x = x[:, : h - h % side, : w - w % side]
  return (
    x.reshape(n, side, x.shape[1] // side, side, x.shape[2] // side, c).mean((2, 4)).reshape(n, -1)
  )


def plot_reconstructions(originals: np.ndarray, rows: dict[str, np.ndarray], path: str) -> str:
  """One row of originals, then one labelled row of reconstructions per model."""
  labelled = {"original": originals, **rows}
  strips = [images.grid(v, columns=len(v)) for v in labelled.values()]
  fig = Figure(figsize=(0.6 * len(originals) + 1.2, 0.7 * len(strips) + 0.3))
  for i, (label, strip) in enumerate(zip(labelled, strips, strict=True)):
    ax = fig.add_subplot(len(strips), 1, i + 1)
    ax.imshow(np.squeeze(strip), cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(label, rotation=0, ha="right", va="center")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def evaluate(
  workdirs: list[str],
  out: str,
  *,
  num_test: int | None = None,
  max_database: int | None = None,
  probe_train: int = 5000,
  k: int = 10,
  seed: int = 0,
) -> dict[str, Any]:
  """Runs every evaluation and writes the tables and figures to `out`; returns the summary.

  Args:
    workdirs: `train.autoencoder` workdirs, trained with different losses on one dataset.
    out: output folder.
    num_test: test images used (all by default).
    max_database: training images in the retrieval database (all by default).
    probe_train: training codes the linear probes are fitted on.
    k: largest number of neighbours of the retrieval curve.
    seed: seed of the subsets.
  """
  runs = load_runs(workdirs)
  dataset, test = ae_train.load_data(runs[0].config)
  rng = np.random.default_rng(seed)
  # Random subsets: some datasets are stored sorted by label (the embedded MNIST is).
  n_test = len(test) if num_test is None else min(num_test, len(test))
  test_idx = np.sort(rng.permutation(len(test))[:n_test])
  n_db = len(dataset.train) if max_database is None else min(max_database, len(dataset.train))
  db_idx = np.sort(rng.permutation(len(dataset.train))[:n_db])
  x_test, x_db = test.gather(test_idx), dataset.train.gather(db_idx)
  recons, codes, db_codes = {}, {}, {}
  for run in runs:
    recons[run.name], codes[run.name] = apply_in_batches(run, x_test["image"])
    db_codes[run.name] = apply_in_batches(run, x_db["image"])[1]

  channels = x_test["image"].shape[-1]
  judges = {}
  for run in runs:
    loss, params = perceptual.LOSSES[run.name], perceptual.LOSSES[run.name].params(channels)
    judges[run.name] = jax.jit(lambda x, y, loss=loss, params=params: loss(x, y, params=params))
  scores = win_rate.score_reconstructions(x_test["image"], recons, judges)
  names, matrix = win_rate.win_rate_matrix(scores, names=[r.name for r in runs])
  os.makedirs(out, exist_ok=True)
  summary: dict[str, Any] = {
    "workdirs": workdirs,
    "dataset": runs[0].config.dataset,
    "num_test": len(test_idx),
    "num_database": n_db,
    "win_rates": {"names": names, "matrix": matrix.tolist()},
    "mean_test_losses": {j: {m: float(v.mean()) for m, v in s.items()} for j, s in scores.items()},
    "paths": {"win_rates": report.write_win_rate_report(names, matrix, out)},
  }

  curves = {}
  for name in names:
    words_q, words_db = retrieval.pack_codes(codes[name]), retrieval.pack_codes(db_codes[name])
    neighbours, _ = retrieval.hamming_knn(words_q, words_db, k=k)
    curves[name] = retrieval.precision_at_k(x_db["label"][neighbours], x_test["label"])
  summary["retrieval"] = {n: c.tolist() for n, c in curves.items()}
  summary["paths"]["retrieval"] = report.write_retrieval_report(curves, out)

  fit = np.sort(rng.permutation(n_db)[: min(probe_train, n_db)])
  rows = []
  for name in names:
    svm = probes.linear_svm_error(
      db_codes[name][fit], x_db["label"][fit], codes[name], x_test["label"], seed=seed
    )
    ridge = probes.ridge_mse(
      db_codes[name][fit],
      thumbnails(x_db["image"][fit]),
      codes[name],
      thumbnails(x_test["image"]),
      alphas=(0.1, 1.0, 10.0, 100.0),
    )
    rows.append(
      {
        "trained_with": name,
        "svm_error": svm.value,
        "svm_C": svm.param,
        "thumbnail_ridge_mse": ridge.value,
        "ridge_alpha": ridge.param,
      }
    )
  summary["probes"] = rows
  summary["paths"]["probes"] = metrics.write_table(
    rows, out, "probes", title="Linear probes on the codes (test split)"
  )
  shown = np.sort(np.random.default_rng(seed + 1).permutation(len(test_idx))[:16])
  summary["paths"]["reconstructions"] = plot_reconstructions(
    x_test["image"][shown],
    {n: recons[n][shown] for n in names},
    os.path.join(out, "reconstructions.png"),
  )
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv: list[str]) -> None:
  del argv
  summary = evaluate(
    FLAGS.workdirs,
    FLAGS.out,
    num_test=FLAGS.num_test,
    max_database=FLAGS.max_database,
    probe_train=FLAGS.probe_train,
  )
  print(json.dumps({k: v for k, v in summary.items() if k != "paths"}, indent=1))


if __name__ == "__main__":
  flags.DEFINE_list("workdirs", [], "train.autoencoder workdirs (different losses, one dataset)")
  flags.DEFINE_string("out", "eval_autoencoders", "output folder")
  flags.DEFINE_integer("num_test", None, "test images used (default all)")
  flags.DEFINE_integer("max_database", None, "training images in the retrieval database")
  flags.DEFINE_integer("probe_train", 5000, "training codes the linear probes are fitted on")
  FLAGS = flags.FLAGS
  app.run(main)
