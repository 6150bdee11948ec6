"""eval.digits: a finished train.vae run scored by the digit classifier."""

import pytest

from eval import digits as eval_digits
from train import data, digits
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
  assert row == {"workdir": config.workdir, "loss": "l2", "step": 2, **expected}
  assert 0 <= row["class_coverage"] <= 10


def test_evaluate_refuses_a_run_on_other_data(tmp_path):
  config = vae_train.Config(
    loss="l2", arch="tiny", channels=3, workdir=str(tmp_path), max_steps=1, **QUICK
  )
  vae_train.train(config)
  with pytest.raises(ValueError, match="digit classifier scores"):
    eval_digits.evaluate(config.workdir, cache_dir=str(tmp_path / "cache"))
