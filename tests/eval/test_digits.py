"""eval.digits: a finished train.vae run scored by the digit classifier."""

import jax
import numpy as np
import PIL.Image
import pytest

from eval import digits as eval_digits
from train import data, digits, images, metrics
from train import vae as vae_train

QUICK = dict(progress=False, test_metrics=False, eval_examples=64)


def test_evaluate_scores_the_latest_checkpoint(tmp_path):
  # No test metrics: the run's own judge (the default classifier) is train.digits' test.
  config = vae_train.Config(
    loss="l2", arch="tiny", workdir=str(tmp_path / "run"), max_steps=2, **QUICK
  )
  state = vae_train.train(config)
  cheap = digits.Settings(steps=20)  # the scoring, not the judge, is under test here
  cache = str(tmp_path / "cache")
  row = eval_digits.evaluate(config.workdir, settings=cheap, cache_dir=cache, num_samples=50)
  dataset = data.load("mnist_embedded", image_size=32, channels=1)
  judge = digits.classifier(dataset, settings=cheap, cache_dir=cache)
  model = vae_train.create(vae_train.resolve(config), 1)[0]
  expected = vae_train.digit_scores(model, state, dataset.test, judge, seed=0, num_samples=50)
  (last,) = [line for line in metrics.read_lines(config.workdir) if "test_loss" in line]
  logged = {"test_psnr": last["test_psnr"]}  # no test metrics: PSNR only
  assert row == {"workdir": config.workdir, "loss": "l2", "step": 2, **expected, **logged}
  assert 0 <= row["class_coverage"] <= 10


def test_samples_figure_puts_runs_side_by_side(tmp_path):
  runs = []
  for loss in ("l2", "ssim"):
    config = vae_train.Config(
      loss=loss, arch="tiny", workdir=str(tmp_path / loss), max_steps=1, **QUICK
    )
    vae_train.train(config)
    runs.append(vae_train.load(config.workdir))
  path = eval_digits.samples_figure(runs, str(tmp_path / "samples.png"), count=16)
  figure = np.asarray(PIL.Image.open(path))
  grid = 4 * (32 + 2) + 2  # 16 samples of 32x32 in a 4x4 grid, 2 px between and around
  assert figure.shape[:2] == (2 * grid, 2 * (2 * grid + 6))  # scale 2, a 6 px spacer
  for i, (config, model, state) in enumerate(runs):  # each panel: that run's decoded codes
    z = jax.random.normal(jax.random.key(0), (16, config.latent))
    expected = images.grid(np.asarray(vae_train.coders(model, state)[1](z)), columns=4)
    panel = figure[::2, ::2][:, i * (grid + 6) : i * (grid + 6) + grid]
    np.testing.assert_allclose(panel.reshape(expected.shape) / 255, expected, atol=1 / 255)


def test_evaluate_refuses_a_run_on_other_data(tmp_path):
  config = vae_train.Config(
    loss="l2", arch="tiny", channels=3, workdir=str(tmp_path), max_steps=1, **QUICK
  )
  vae_train.train(config)
  with pytest.raises(ValueError, match="digit classifier scores"):
    eval_digits.evaluate(config.workdir, cache_dir=str(tmp_path / "cache"))
