"""Digit-classifier scores of finished `train.vae` runs on MNIST-like data, as JSON lines.

    python -m eval.digits --workdir=runs/vae_mnist_watson_dft
    python -m eval.digits --workdir=runs/vae_mnist_l2,runs/vae_mnist_watson_dft --out=DIR

Each run's latest checkpoint is scored on its dataset's whole test split by the classifier of
`train.digits` (trained on the training split at the first call, then read from its cache):
class accuracy of the test reconstructions, class coverage, confidence and inception score of
prior samples, and the classifier's own test accuracy. A run's `final_digits_*` line in
metrics.jsonl holds the same scores (of `--eval_examples` test images spread over the split, when
that was set). Each row also carries the test PSNR, SSIM and Watson-DFT of the run's last
evaluation (from its metrics.jsonl). With `--out`, DIR gets digits.{json,md}, one row per run,
and samples.png: 64 prior samples of each run (the same codes), side by side in the order given.
"""

import json
import os
from typing import Any

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from train import data, digits, images, metrics
from train import vae as vae_train

# The test metrics of a run's last evaluation that its row repeats.
TEST_METRICS = ("test_psnr", "test_ssim", "test_watson_dft")


def evaluate(
  workdir: str,
  *,
  num_samples: int = 400,
  settings: digits.Settings | None = None,
  cache_dir: str | None = None,
  run: tuple[Any, Any, Any] | None = None,
) -> dict[str, Any]:
  """The run's name, step and `train.digits.scores` of its latest checkpoint.

  Args:
    workdir: a `train.vae` run on an MNIST-like dataset (`train.digits.applies`).
    num_samples: prior samples drawn (with the run's seed, as at the end of its training).
    settings: the classifier's hyper-parameters (default `train.digits.Settings()`).
    cache_dir: the classifier cache (default `train.digits`'s).
    run: `train.vae.load(workdir)` when the caller has it already.

  Returns:
    `{"workdir", "loss", "step", **train.digits.score_vae, **TEST_METRICS}` (the test metrics
    the run logged).
  """
  config, model, state = run or vae_train.load(workdir)
  dataset = data.load(config.dataset, image_size=config.image_size, channels=config.channels)
  if not digits.applies(dataset):
    raise ValueError(
      f"{workdir} was trained on {config.dataset} at {dataset.image_shape}; the digit classifier "
      f"scores {digits.MNIST_LIKE} at {digits.IMAGE_SHAPE}."
    )
  judge = digits.classifier(dataset, settings=settings or digits.Settings(), cache_dir=cache_dir)
  scores = vae_train.digit_scores(
    model, state, dataset.test, judge, seed=config.seed, num_samples=num_samples
  )
  evaluated = [line for line in metrics.read_lines(workdir) if "test_loss" in line]
  logged = {k: evaluated[-1][k] for k in TEST_METRICS if evaluated and k in evaluated[-1]}
  return {
    "workdir": workdir,
    "loss": config.loss,
    "step": int(jax.device_get(state.step)),
    **scores,
    **logged,
  }


def samples_figure(
  runs: list[tuple[Any, Any, Any]], path: str, *, count: int = 64, seed: int = 0
) -> str:
  """`count` prior samples of each run (`train.vae.load`'s triples), decoded from the same codes,
  as grids side by side."""
  grids = []
  for config, model, state in runs:
    _, decode = vae_train.coders(model, state)
    decoded = np.asarray(decode(jax.random.normal(jax.random.key(seed), (count, config.latent))))
    grids.append(images.grid(decoded, columns=int(np.sqrt(count))))
  spacer = np.full((grids[0].shape[0], 6, grids[0].shape[-1]), 0.5, grids[0].dtype)
  row = np.concatenate([part for g in grids for part in (g, spacer)][:-1], axis=1)
  return images.save_png(path, row, scale=2)


def main(argv: list[str]) -> None:
  del argv
  if not FLAGS["verbosity"].present:  # stdout is JSON; orbax's INFO chatter goes unless asked for
    absl_logging.set_verbosity(absl_logging.WARNING)
  runs = [vae_train.load(w) for w in FLAGS.workdir]
  rows = [
    evaluate(w, num_samples=FLAGS.num_samples, run=run)
    for w, run in zip(FLAGS.workdir, runs, strict=True)
  ]
  for row in rows:
    print(json.dumps(row))
  if FLAGS.out:
    metrics.write_table(rows, FLAGS.out, "digits", title="Digit-classifier scores")
    samples_figure(runs, os.path.join(FLAGS.out, "samples.png"))


if __name__ == "__main__":
  flags.DEFINE_list("workdir", None, "train.vae workdirs (comma-separated)", required=True)
  flags.DEFINE_integer("num_samples", 400, "prior samples per run")
  flags.DEFINE_string("out", "", "folder for digits.{json,md} (optional)")
  FLAGS = flags.FLAGS
  app.run(main)
