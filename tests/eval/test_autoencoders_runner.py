"""eval.autoencoders on two tiny trained workdirs: every table and figure, their arithmetic."""

import json
import os
import tempfile

import numpy as np
import pytest

from eval import autoencoders
from train import autoencoder as ae_train

FAST = dict(arch="tiny_conv", batch_size=16, progress=False, test_metrics=False, max_steps=2)


@pytest.fixture(scope="module")
def workdirs():
  with tempfile.TemporaryDirectory() as root:
    paths = [os.path.join(root, loss) for loss in ("l1", "l2")]
    for path, loss in zip(paths, ("l1", "l2"), strict=True):
      ae_train.train(ae_train.Config(loss=loss, workdir=path, **FAST))
    yield paths


def test_runner_writes_every_table(workdirs):
  with tempfile.TemporaryDirectory() as out:
    summary = autoencoders.evaluate(
      workdirs, out, num_test=100, max_database=400, probe_train=200, k=5
    )
    for name in ("win_rates", "retrieval", "probes"):
      for ext in ("json", "md"):
        assert os.path.exists(os.path.join(out, f"{name}.{ext}")), (name, ext)
    for name in ("win_rates.png", "retrieval.png", "reconstructions.png", "summary.json"):
      assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "summary.json")) as f:
      assert json.load(f)["num_test"] == 100
  w = np.array(summary["win_rates"]["matrix"])
  assert summary["win_rates"]["names"] == ["l1", "l2"]
  np.testing.assert_allclose(np.diag(w), 0.5)
  assert np.all((w >= 0) & (w <= 1))
  for curve in summary["retrieval"].values():
    assert len(curve) == 5 and all(0 <= p <= 1 for p in curve)
  for row in summary["probes"]:
    assert 0 <= row["svm_error"] < 0.9  # 10 classes: chance is 0.9
    assert 0 <= row["thumbnail_ridge_mse"] < 0.1


def test_same_loss_twice_is_refused(workdirs):
  with pytest.raises(ValueError, match="different losses"):
    autoencoders.load_runs([workdirs[0], workdirs[0]])


def test_thumbnails_are_block_means():
  x = np.arange(2 * 8 * 8, dtype=np.float64).reshape(2, 8, 8, 1)
  t = autoencoders.thumbnails(x, side=4)
  assert t.shape == (2, 16)
  np.testing.assert_allclose(t[0, 0], x[0, :2, :2].mean())
  np.testing.assert_allclose(t[1, 15], x[1, 6:, 6:].mean())
