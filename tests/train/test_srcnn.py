"""train.srcnn: two steps + resume, multiple processes, the data pairs, the 33 px MS-SSIM loss."""

import json
import os
import tempfile

import chex
import jax
import numpy as np
import pytest

import perceptual
from train import srcnn as sr_train
from train import superres

FAST = dict(arch="tiny", num_train=64, num_test=16, batch_size=16, progress=False, log_every=1)


def test_two_steps_then_resume():
  with tempfile.TemporaryDirectory() as workdir:
    config = sr_train.Config(loss="ms_ssim", workdir=workdir, max_steps=2, **FAST)
    sr_train.train(config)
    sr_train.train(sr_train.Config(**{**config.__dict__, "max_steps": 4}))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = [json.loads(line) for line in f]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in lines if "test_loss" in r] == [2, 4]
    (final,) = [r for r in lines if "final_srcnn_psnr" in r]
    assert final["step"] == 4 and np.isfinite(final["final_srcnn_psnr"])
    # The bicubic x4 baseline of chelsea's Y channel sits near 30 dB.
    assert 27.0 < final["final_bicubic_psnr"] < 33.0 and 0.6 < final["final_bicubic_ssim"] < 0.95
    assert os.path.exists(os.path.join(workdir, "chelsea.png"))
    assert int(sr_train.load(workdir)[2].step) == 4


def test_two_processes_train_like_one(two_processes_and_one):
  flags = ("--arch=tiny", "--num_train=64", "--num_test=16", "--batch_size=16", "--max_steps=2")
  with tempfile.TemporaryDirectory() as root:
    multi, single = two_processes_and_one("train.srcnn", root, *flags, "--progress=false")
    # Loaded here, in one process: the checkpoint of two processes restores onto this topology.
    config, _, state = sr_train.load(multi)
    assert config.num_processes == 2 and int(state.step) == 2
    chex.assert_trees_all_close(
      jax.device_get(state.params),
      jax.device_get(sr_train.load(single)[2].params),
      rtol=1e-5,
      atol=1e-5,
    )


def test_pairs_are_aligned_degradations():
  pair = sr_train.photo_pair("chelsea", scale=4)
  assert pair.dtype == np.uint8 and pair.shape[-1] == 2 and pair.shape[0] % 4 == 0
  truth = pair[None, ..., 1:].astype(np.float32) / 255
  again = np.asarray(superres.bicubic_degrade(truth, scale=4))
  np.testing.assert_allclose(
    pair[..., :1].astype(np.float32) / 255, again[0], atol=0.5 / 255 + 1e-6
  )
  dataset = sr_train.load_data(sr_train.Config(**FAST))
  batch = dataset.train.gather(np.arange(4))["image"]
  assert batch.shape == (4, 33, 33, 2) and batch.min() >= 0 and batch.max() <= 1


def test_loss_names():
  assert sr_train.make_loss("mse") is sr_train.make_loss("l2")
  assert sr_train.make_loss("ms_ssim") is perceptual.LOSSES["ms_ssim_snell"]
  loss = jax.jit(sr_train.make_loss("ms_ssim"))
  x = jax.random.uniform(jax.random.key(0), (2, 33, 33, 1))
  np.testing.assert_allclose(loss(x, x), 0.0, atol=1e-6)
  assert np.all(np.asarray(loss(x, 1.0 - x)) > 0.5)
  with pytest.raises(KeyError):
    sr_train.make_loss("no_such_loss")
