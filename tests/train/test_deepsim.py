"""train.deepsim: two steps + resume for both tasks, the discriminator-skip rule, term flags and
comparator weights passed as jit arguments."""

import dataclasses
import json
import os
import tempfile

import chex
import jax
import numpy as np
import pytest

from perceptual import deep
from train import deepsim

# 16 pixels: AlexNet conv1 (3x3) is inverted and conv2 (1x1) compared, to keep compiles small.
TINY = dict(
  image_size=16,
  input_layer="conv1",
  comparator_layer="conv2",
  width=4,
  hidden=16,
  latent=8,
  batch_size=8,
  eval_batch_size=8,
  num_train=16,
  num_test=8,
  progress=False,
  log_every=1,
)


def _lines(workdir, name="metrics.jsonl"):
  with open(os.path.join(workdir, name)) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("task", ["inversion", "vae"])
def test_two_steps_then_resume(task):
  with tempfile.TemporaryDirectory() as workdir:
    config = deepsim.Config(task=task, workdir=workdir, max_steps=2, **TINY)
    deepsim.train(config)
    deepsim.train(dataclasses.replace(config, max_steps=4))
    lines = _lines(workdir)
    steps = [line for line in lines if "g_loss" in line]
    assert [line["step"] for line in steps] == [1, 2, 3, 4]
    for line in steps:
      assert {"l_feat", "l_img", "l_adv", "l_discr", "d_updated"} <= line.keys()
      assert ("l_kl" in line) == (task == "vae")
      assert np.isfinite(line["g_loss"])
    assert [line["step"] for line in lines if "test_loss" in line] == [2, 4]
    evaluation = _lines(workdir, "evaluation.jsonl")
    assert [e["step"] for e in evaluation] == [2, 4]
    assert all(e["image_error"] > 0 and e["feature_error"] > 0 for e in evaluation)
    pictures = ["reconstructions.png", "reencoding.png", "interpolations.png"]
    for name in pictures + (["samples.png"] if task == "vae" else []):
      assert os.path.exists(os.path.join(workdir, name)), name
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4]


@pytest.fixture(scope="module")
def setup():
  """One compiled inversion step; the ratio, lambdas and comparator are jit arguments."""
  config = deepsim.resolve(deepsim.Config(workdir="unused", **TINY))
  networks, txs, state = deepsim.create(config)
  train_step, _ = deepsim.make_steps(networks, txs, config)
  step = jax.jit(chex.assert_max_traces(train_step, n=1))
  x = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32)
  return config, networks, txs, state, step, {"image": x}, deepsim.make_consts(config)


def test_discriminator_is_skipped_below_the_ratio(setup):
  _, _, _, state, step, batch, consts = setup
  paused, m_paused = step(state, batch, jax.random.key(0), {**consts, "discriminator_ratio": 1e9})
  assert float(m_paused["d_updated"]) == 0.0
  chex.assert_trees_all_equal(paused.d_params, state.d_params)
  chex.assert_trees_all_equal(paused.d_opt_state, state.d_opt_state)
  moved, m_moved = step(state, batch, jax.random.key(0), {**consts, "discriminator_ratio": 0.0})
  assert float(m_moved["d_updated"]) == 1.0
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), moved.d_params, state.d_params)
  assert max(jax.tree.leaves(diffs)) > 0
  # The generator is updated either way, identically (same key, same D for its loss).
  chex.assert_trees_all_close(paused.g_params, moved.g_params)


def test_comparator_weights_are_arguments(setup):
  _, _, _, state, step, batch, consts = setup
  _, pretrained = step(state, batch, jax.random.key(0), consts)
  random = {**consts, "comparator": deep.alexnet_random_params(jax.random.key(3))}
  _, randomised = step(state, batch, jax.random.key(0), random)  # no retrace (max_traces=1)
  assert float(pretrained["l_feat"]) != pytest.approx(float(randomised["l_feat"]), rel=1e-3)
  np.testing.assert_allclose(pretrained["l_img"], randomised["l_img"], rtol=1e-6)
  zero = {**consts, "lambdas": {**consts["lambdas"], "feat": 0.0, "img": 0.0}}
  _, adv_only = step(state, batch, jax.random.key(0), zero)
  np.testing.assert_allclose(adv_only["g_loss"], 100.0 * adv_only["l_adv"], rtol=1e-5)


@pytest.mark.parametrize("dropped", ["feat", "adv", "img"])
def test_flags_drop_terms(dropped):
  config = deepsim.resolve(deepsim.Config(workdir="unused", task="vae", **{dropped: False}, **TINY))
  networks, txs, state = deepsim.create(config)
  train_step, _ = deepsim.make_steps(networks, txs, config)
  batch = {"image": np.full((2, 16, 16, 3), 0.5, np.float32)}
  new, metrics = jax.jit(train_step)(state, batch, jax.random.key(0), deepsim.make_consts(config))
  assert f"l_{dropped}" not in metrics and "l_kl" in metrics
  assert ("l_discr" in metrics) == (dropped != "adv")
  lambdas = {"feat": 0.01, "adv": 100.0, "img": 2e-6, "kl": 20.0}
  want = sum(lambdas[k[2:]] * float(v) for k, v in metrics.items() if k[2:] in lambdas)
  np.testing.assert_allclose(metrics["g_loss"], want, rtol=1e-5)
  if dropped == "adv":
    chex.assert_trees_all_equal(new.d_params, state.d_params)


def test_dropping_every_term_is_an_error():
  config = deepsim.Config(workdir="unused", feat=False, adv=False, img=False, **TINY)
  networks, txs, _ = deepsim.create(config)
  with pytest.raises(ValueError, match="keep at least one"):
    deepsim.make_steps(networks, txs, config)
