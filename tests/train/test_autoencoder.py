"""train.autoencoder: two steps + resume, early stopping (and its survival of a resume)."""

import json
import os
import tempfile

import numpy as np
import pytest

from train import autoencoder as ae_train
from train import loop

FAST = dict(arch="tiny_conv", batch_size=16, progress=False, test_metrics=False, log_every=1)


def _lines(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_two_steps_then_resume():
  with tempfile.TemporaryDirectory() as workdir:
    config = ae_train.Config(loss="l2", workdir=workdir, max_steps=2, **FAST)
    ae_train.train(config)
    ae_train.train(ae_train.Config(**{**config.__dict__, "max_steps": 4}))
    lines = _lines(workdir)
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in lines if "test_loss" in r] == [2, 4]
    final = [r for r in lines if "final_step" in r]
    assert len(final) == 1 and final[0]["step"] == 4  # the first call's final line was replaced
    assert np.isfinite(final[0]["final_test_loss"]) and final[0]["final_test_psnr"] > 0
    assert os.path.exists(os.path.join(workdir, "reconstructions.png"))
    config, model, state = ae_train.load(workdir, best=False)
    assert int(state.step) == 4 and model.code == "binary" and config.learning_rate > 0


def test_resolve_defaults():
  l2 = ae_train.resolve(ae_train.Config(loss="l2"))
  assert l2.learning_rate == pytest.approx(5e-5 * 32 * 32 / 2)  # Caffe's summed MSE, see PIXEL_LR
  assert l2.dataset == "mnist_embedded"
  model = ae_train.build_model(ae_train.Config(arch="conv256", bottleneck=64, binary=False))
  assert (model.code_dim, model.code) == (64, "tanh")
  assert ae_train.build_model(ae_train.Config(arch="snell128_yale", binary=False)).code == "linear"


@pytest.mark.parametrize(
  "values, stop",
  [([3.0], False), ([3.0, 2.0], False), ([3.0, 2.0, 2.0], True), ([3.0, 2.0, 2.5], True)],
)
def test_early_stopping_rule(values, stop):
  rule = loop.early_stopping("test_loss", patience=1)
  assert rule([{"test_loss": v} for v in values]) is stop


def test_early_stopping_patience():
  rule = loop.early_stopping("test_loss", patience=2)
  assert not rule([{"test_loss": v} for v in (3.0, 2.0, 2.5)])
  assert rule([{"test_loss": v} for v in (3.0, 2.0, 2.5, 2.1)])
  with pytest.raises(ValueError, match="patience"):
    loop.early_stopping(patience=0)


def test_early_stop_survives_resume():
  # 64 training images (4 steps per epoch); learning rate 0 leaves the validation loss flat, so
  # the second epoch does not improve on the first and training stops at step 8 of 40.
  with tempfile.TemporaryDirectory() as workdir:
    config = ae_train.Config(
      loss="l2", workdir=workdir, validation=9000 - 64, epochs=10, learning_rate=0.0, **FAST
    )
    ae_train.train(ae_train.Config(**{**config.__dict__, "max_steps": 4}))  # killed after epoch 1
    assert ae_train.train(config).step == 8
    assert ae_train.train(config).step == 8  # a stopped run stays stopped
    lines = _lines(workdir)
    assert [r["step"] for r in lines if "test_loss" in r] == [4, 8]
    assert [r["final_step"] for r in lines if "final_step" in r] == [4]  # the best: the first


def test_eval_every_evaluates_every_nth_epoch_and_the_last():
  # 64 training images, 4 steps per epoch: epochs 2 and 4 are evaluated, and the last (5).
  with tempfile.TemporaryDirectory() as workdir:
    config = ae_train.Config(
      loss="l2", workdir=workdir, validation=9000 - 64, epochs=5, eval_every=2, **FAST
    )
    assert ae_train.train(config).step == 20
    assert [r["step"] for r in _lines(workdir) if "test_loss" in r] == [8, 16, 20]
