"""train.calibrate (2AFC fitting) and train.twoafc_data (synthetic records, BAPPS readers)."""

import json
import os
import tempfile

import jax
import numpy as np
import pytest
from PIL import Image

import perceptual
from perceptual import twoafc
from train import calibrate, twoafc_data

TINY = dict(num_train=8, num_test=8, batch_size=8, eval_batch_size=8, channels=1, log_every=1,
            progress=False, constant_epochs=1, decay_epochs=1)  # fmt: skip


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_two_steps_resume_and_fitted_params_load_back():
  with tempfile.TemporaryDirectory() as workdir:
    config = calibrate.Config(metric="watson_dft", workdir=workdir, **TINY)
    calibrate.train(calibrate.Config(**{**config.__dict__, "max_steps": 1}))
    state = calibrate.train(config)  # resumes at step 1, runs to 2 (2 epochs of 1 step)
    lines = _jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [line["step"] for line in lines if "loss" in line] == [1, 2]
    assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)
    with open(os.path.join(workdir, "calibration.json")) as f:
      report = json.load(f)
    assert report["synthetic"] and "SYNTHETIC" in report["data"] and report["steps"] == 2
    fitted = jax.device_get(state.params["metric"])
    initial = calibrate.METRICS["watson_dft"].initial("init", 1)
    assert not np.allclose(fitted["t_tild"], initial["t_tild"])  # the fit moved the table
    # `like` gives the form only (the initial values): the file must bring the fitted ones.
    loaded = twoafc.load_params(report["fitted_params"], like=initial)
    ds = twoafc_data.load("synthetic", channels=1, num_train=16, num_test=8)
    batch = ds.test.gather(np.arange(8))
    distance = calibrate.METRICS["watson_dft"].distance
    dist = jax.jit(lambda p: distance(batch["image"], batch["p0"], p, None))
    np.testing.assert_array_equal(dist(loaded), dist(fitted))


def test_lpips_heads_fit_stay_non_negative_and_load_over_the_trunk():
  with tempfile.TemporaryDirectory() as workdir:
    config = calibrate.Config(
      metric="lpips_alex", init="init", workdir=workdir, learning_rate=0.5,
      **{**TINY, "channels": 3},
    )  # fmt: skip
    state = calibrate.train(config)
    heads = jax.device_get(state.params["metric"])
    assert all(np.all(w >= 0) for w in jax.tree.leaves(heads))
    assert any(np.any(w != 1.0) for w in jax.tree.leaves(heads))  # the fit moved them
    path = os.path.join(workdir, "fitted_params.json")
    with open(path) as f:
      assert all(key.startswith("heads.") for key in json.load(f))  # the trunk is not copied
    loss = perceptual.LOSSES["lpips_alex"]
    params = twoafc.load_params(path, like=loss.params(3))  # what --loss_params does
    ds = twoafc_data.load("synthetic", channels=3, num_train=16, num_test=8)
    batch = ds.test.gather(np.arange(4))
    fitted = {"backbone": loss.params(3)["backbone"], "heads": heads}
    np.testing.assert_allclose(
      loss(batch["image"], batch["p0"], params=params),
      loss(batch["image"], batch["p0"], params=fitted),
      rtol=1e-6,
    )
  with pytest.raises(ValueError, match="does not apply to lpips_alex"):
    calibrate.create(calibrate.Config(metric="lpips_alex", init="paper_2019"), 1)


def test_load_params_rejects_a_partial_entry(tmp_path):
  like = {"heads": {"a": np.ones(3), "b": np.ones(2)}, "backbone": {"w": np.ones(4)}}
  path = twoafc.save_params(str(tmp_path / "p.json"), {"heads": {"a": np.ones(3)}})
  with pytest.raises(ValueError, match="another form"):
    twoafc.load_params(path, like=like)


def test_synthetic_records_follow_the_stated_rule():
  ds = twoafc_data.load("synthetic", channels=3, num_train=16, num_test=8)
  assert ds.synthetic and "SYNTHETIC" in ds.name and ds.image_shape == (64, 64, 3)
  batch = ds.train.gather(np.arange(16))
  assert set(batch) == {"image", "p0", "p1", "judge", "category", "label"}
  assert batch["p0"].dtype == np.float32 and 0 <= batch["p0"].min() <= batch["p0"].max() <= 1
  assert np.all((batch["judge"] > 0) & (batch["judge"] < 1))
  assert set(np.unique(batch["category"])) <= set(range(len(twoafc_data.SYNTHETIC_CATEGORIES)))
  first, again = (twoafc_data.synthetic_records(("astronaut",), 4, size=64, seed=3) for _ in "ab")
  np.testing.assert_array_equal(first[1], again[1])  # deterministic from the seed


def test_bapps_offline_fails_fast_with_instructions():
  with tempfile.TemporaryDirectory() as d, pytest.raises(FileNotFoundError, match="twoafc_val"):
    twoafc_data.load("bapps", data_dir=d)


def test_bapps_folder_reader():
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as d:
    for split, cats in twoafc_data.BAPPS_CATEGORIES.items():
      for c in cats:
        for key in ("ref", "p0", "p1", "judge"):
          os.makedirs(os.path.join(d, "2afc", split, c, key))
        for n in ("000000", "000001"):
          for key in ("ref", "p0", "p1"):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(image).save(os.path.join(d, "2afc", split, c, key, f"{n}.png"))
          np.save(os.path.join(d, "2afc", split, c, "judge", f"{n}.npy"), np.array([0.25]))
    ds = twoafc_data.load("bapps", data_dir=d, channels=3)
    assert len(ds.train) == 6 and len(ds.test) == 12 and not ds.synthetic
    batch = ds.test.gather(np.arange(12))
    np.testing.assert_allclose(batch["judge"], 0.25)
    assert [ds.categories[c] for c in batch["category"][::2]] == list(
      twoafc_data.BAPPS_CATEGORIES["val"]
    )
