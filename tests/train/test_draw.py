"""train.draw: smoke + resume, the objective per loss, C defaults, the label filter."""

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models import draw as draw_models
from train import data
from train import draw as draw_train

TINY = dict(glimpses=2, lstm_size=8, latent=4, batch_size=16, eval_batch_size=64, label=1)
FAST = dict(progress=False, log_every=1, eval_examples=64)


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_two_steps_then_resume():
  with tempfile.TemporaryDirectory() as workdir:
    config = draw_train.Config(loss="l2", workdir=workdir, max_steps=2, **TINY, **FAST)
    draw_train.train(config)
    draw_train.train(draw_train.Config(**{**config.__dict__, "max_steps": 4}))
    lines = _lines(workdir)
    train_lines = [line for line in lines if "loss" in line]
    assert [line["step"] for line in train_lines] == [1, 2, 3, 4]
    for line in train_lines:
      assert np.isfinite(line["loss"]) and line["kl"] >= 0
      np.testing.assert_allclose(
        line["loss"], line["kl"] + 10 * 32 * 32 * line["distortion"], rtol=1e-5
      )
    tests = [line for line in lines if "test_loss" in line]
    assert [line["step"] for line in tests] == [2, 4]
    assert all(line["test_kl"] >= 0 and np.isfinite(line["test_psnr"]) for line in tests)
    for name in ("reconstructions", "samples", "canvas_samples", "canvas_reconstructions"):
      assert os.path.exists(os.path.join(workdir, f"{name}.png")), name
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4]


def test_bce_step_is_the_draw_bound_and_clips_each_leaf():
  config = draw_train.resolve(draw_train.Config(loss="bce", **TINY))
  assert config.loss_weight == 1.0
  model, _, state = draw_train.create(config)
  # SGD with rate 1 exposes the clipped gradient as the parameter change.
  tx = optax.chain(draw_models.clip_each_by_norm(1e-3), optax.sgd(1.0))
  state = state._replace(opt_state=tx.init(state.params))
  train_step, eval_step = draw_train.make_steps(model, tx, config)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 32, 32, 1)), jnp.float32)
  key = jax.random.key(3)
  new, metrics = jax.jit(train_step)(state, {"image": x}, key, None)
  out = model.apply(state.params, x, jax.random.split(key)[0])
  bce = -np.sum(
    x * np.log(np.asarray(out.image)) + (1 - x) * np.log1p(-np.asarray(out.image)), axis=(1, 2, 3)
  )
  kl = np.sum(np.asarray(out.kl), axis=1)
  np.testing.assert_allclose(metrics["loss"], np.mean(kl + bce), rtol=1e-4)
  np.testing.assert_allclose(metrics["kl"], np.mean(kl), rtol=1e-4)
  deltas = jax.tree.map(lambda a, b: jnp.linalg.norm(a - b), new.params, state.params)
  assert max(jax.tree.leaves(deltas)) <= 1e-3 * (1 + 1e-4)
  values = jax.jit(eval_step)(state, {"image": x, "index": jnp.arange(4)}, None)
  assert {"loss", "kl", "distortion", "psnr"} <= set(values)
  assert all(v.shape == (4,) for v in values.values())


def test_kl_warmup_ramps_the_kl_weight():
  """With kl_warmup=N the step-s objective is (s + 1) / N * KL + C * Delta, then KL + C * Delta."""
  config = draw_train.resolve(draw_train.Config(loss="l2", kl_warmup=4, **TINY))
  model, tx, state = draw_train.create(config)
  train_step, _ = draw_train.make_steps(model, tx, config)
  step = jax.jit(train_step)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 32, 32, 1)), jnp.float32)
  for s, weight in ((0, 0.25), (2, 0.75), (3, 1.0), (9, 1.0)):
    _, m = step(
      state._replace(step=jnp.asarray(s, jnp.int32)), {"image": x}, jax.random.key(0), None
    )
    want = weight * m["kl"] + config.loss_weight * m["distortion"]
    np.testing.assert_allclose(m["loss"], want, rtol=1e-5)


@pytest.mark.parametrize(
  "loss, weight",
  [("bce", 1.0), ("l2", 10.0 * 1024), ("l1", 10.0 * 1024), ("ssim", 500.0), ("gmsm", 500.0)],
)
def test_default_weights(loss, weight):
  assert draw_train.default_weight(loss, 1024) == weight


def test_label_filter_keeps_one_class():
  dataset = data.load("mnist_embedded", image_size=32, channels=1)
  split = draw_train.keep_label(dataset.test, 5)
  labels = split.gather(np.arange(len(split)))["label"]
  assert 0 < len(split) < len(dataset.test) and set(labels.tolist()) == {5}
  with pytest.raises(ValueError, match="no example has label 42"):
    draw_train.keep_label(dataset.test, 42)
