"""train.began and eval.began: smoke + resume, the GAN step's gradients and k_t, Eq. 6, figures."""

import json
import os
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import perceptual
from eval import began as began_eval
from models import began as began_models
from perceptual import gradient
from train import began as began_train
from train import began_report, metrics

TINY = dict(image_size=16, num_filters=4, hidden_size=8, batch_size=8, eval_batch_size=256)
FAST = dict(progress=False, log_every=1, eval_examples=64)
# The Vertolli terms that are registered now (gmsm and chroma join l1 when the registry has them).
AVAILABLE = {n: 1.0 for n in ("l1", "gmsm", "chroma") if n in perceptual.LOSSES}


def _betas(weights):
  return {f"beta_{n}": weights.get(n, 0.0) for n in ("l1", "gmsm", "chroma")}


def test_two_steps_then_resume():
  with tempfile.TemporaryDirectory() as workdir:
    config = began_train.Config(workdir=workdir, max_steps=2, **_betas(AVAILABLE), **TINY, **FAST)
    began_train.train(config)
    began_train.train(began_train.Config(**{**config.__dict__, "max_steps": 4}))
    lines = metrics.read_lines(workdir)
    train_lines = [line for line in lines if "m_global" in line]
    assert [line["step"] for line in train_lines] == [1, 2, 3, 4]
    for line in train_lines:
      assert 0.0 <= line["k"] <= 1.0 and np.isfinite(line["m_global"])
      assert f"real_{next(iter(AVAILABLE))}" in line
    assert [line["step"] for line in lines if "test_loss" in line] == [2, 4]
    for name in (
      "samples.png",
      "reconstructions.png",
      "interpolations.png",
      "similarity_maps.png",
      "m_global.png",
      "distances.md",
    ):
      assert os.path.exists(os.path.join(workdir, name)), name
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4]


def _setup(weights, *, lambda_k=began_models.LAMBDA_K, gamma=0.5, sgd=False):
  config = began_train.resolve(began_train.Config(**_betas(weights), gamma=gamma, **TINY))
  networks, txs, state = began_train.create(config)
  if sgd:  # rate 1: the parameter change is minus the gradient
    txs = (optax.sgd(1.0), optax.sgd(1.0))
    state = state._replace(
      g_opt_state=txs[0].init(state.g_params), d_opt_state=txs[1].init(state.d_params)
    )
  distance = perceptual.multi_distance(weights)
  train_step, _ = began_train.make_steps(
    networks, txs, distance, {}, gamma=gamma, lambda_k=lambda_k, latent=config.hidden_size
  )
  consts = {"distance": distance.params(3), "components": {}}
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 16, 16, 3)), jnp.float32)
  return networks, distance, state, jax.jit(train_step), {"image": x}, consts


@pytest.mark.parametrize("k0", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("lambda_k", [1e-3, 100.0])
def test_k_follows_the_update_rule_and_stays_in_unit_interval(k0, lambda_k):
  *_, state, step, batch, consts = _setup({"l1": 1.0}, lambda_k=lambda_k, gamma=0.7)
  state = state._replace(k=jnp.float32(k0))
  for i in range(2):
    new, metrics = step(state, batch, jax.random.key(i), consts)
    want = np.clip(k0 + lambda_k * (0.7 * metrics["loss_real"] - metrics["loss_fake"]), 0, 1)
    np.testing.assert_allclose(new.k, want, rtol=1e-6, atol=1e-7)
    assert 0.0 <= float(new.k) <= 1.0 and float(metrics["k"]) == float(new.k)
    np.testing.assert_allclose(metrics["d_loss"], metrics["loss_real"] - k0 * metrics["loss_fake"])
    state, k0 = new, float(new.k)


def test_step_gradients_are_those_of_l_d_and_l_g():
  (gen, disc), distance, state, step, batch, consts = _setup({"l1": 2.0, "l2": 1.0}, sgd=True)
  state = state._replace(k=jnp.float32(0.4))
  key = jax.random.key(7)
  new, metrics = step(state, batch, key, consts)
  x, z = batch["image"], began_models.sample_latent(key, 4, 8)

  def energy(v, d_params):
    return jnp.mean(distance(v, disc.apply(d_params, v), params=consts["distance"]))

  def l_d(d_params):  # G(z) fixed
    fake = gen.apply(state.g_params, z)
    return energy(x, d_params) - 0.4 * energy(fake, d_params)

  def l_g(g_params):  # D fixed
    return energy(gen.apply(g_params, z), state.d_params)

  want_d = jax.tree.map(jnp.subtract, state.d_params, jax.jit(jax.grad(l_d))(state.d_params))
  want_g = jax.tree.map(jnp.subtract, state.g_params, jax.jit(jax.grad(l_g))(state.g_params))
  chex.assert_trees_all_close(new.d_params, want_d, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(new.g_params, want_g, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["loss_real"], energy(x, state.d_params), rtol=1e-5)


def test_eq6_loss_is_the_hand_computed_weighted_mean():
  weights = {"l1": 2.0, "l2": 1.0, **({"gmsm": 0.5} if "gmsm" in perceptual.LOSSES else {})}
  rng = np.random.default_rng(1)
  x, y = (rng.uniform(size=(3, 16, 16, 3)).astype(np.float32) for _ in range(2))
  loss = perceptual.multi_distance(weights)
  got = jax.jit(lambda a, b: loss(a, b, params=loss.params(3)))(x, y)
  terms = {"l1": np.abs(x - y).mean(axis=(1, 2, 3)), "l2": np.square(x - y).mean(axis=(1, 2, 3))}
  if "gmsm" in weights:
    terms["gmsm"] = 1.0 - np.asarray(gradient.gmsm(x, y))
  want = sum(w * terms[n] for n, w in weights.items()) / sum(weights.values())
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The trainer's energy L(x) is that mean over D's reconstructions.
  (_, disc), _, state, step, batch, consts = _setup({"l1": 2.0, "l2": 1.0})
  _, metrics = step(state, batch, jax.random.key(0), consts)
  r = np.asarray(disc.apply(state.d_params, batch["image"]))
  x = np.asarray(batch["image"])
  want = np.mean(
    (2 * np.abs(x - r).mean(axis=(1, 2, 3)) + np.square(x - r).mean(axis=(1, 2, 3))) / 3
  )
  np.testing.assert_allclose(metrics["loss_real"], want, rtol=1e-5)


def test_presets_and_overrides():
  assert len(began_train.PRESETS) == 2 * 2 * len(began_models.VERTOLLI_LOSS_WEIGHTS)
  config = began_train.resolve(
    began_train.Config(config="scaled_began_gmsm_halfchrom_g0.7_128", gamma=0.5)
  )
  assert (config.beta_l1, config.beta_gmsm, config.beta_chroma) == (2.0, 1.0, 0.5)
  assert (config.gamma, config.image_size, config.hidden_size) == (0.5, 128, 256)
  plain = began_train.resolve(began_train.Config())
  assert began_train.weights(plain) == {"l1": 1.0} and plain.image_size == 64
  with pytest.raises(ValueError, match="--channels=3"):
    began_train.resolve(began_train.Config(beta_chroma=1.0, channels=1))


def test_chroma_map_mean_is_chroma_similarity():
  rng = np.random.default_rng(2)
  x, y = (rng.uniform(size=(2, 8, 8, 3)).astype(np.float32) for _ in range(2))
  m = jax.jit(perceptual.chroma_similarity_map)(x, y)
  assert m.shape == (2, 8, 8, 1)
  # chroma_similarity is 1 - mean(1 - S): float32 rounding of 1 absolute (values near 0 here).
  similarity = gradient.chroma_similarity(x, y)
  np.testing.assert_allclose(m.mean(axis=(1, 2, 3)), similarity, rtol=1e-5, atol=2.5e-7)
  maps = began_report.similarity_maps(x, x)
  np.testing.assert_allclose(maps["gms"], 1.0, atol=1e-6)
  np.testing.assert_allclose(maps["chroma"], 1.0, atol=1e-6)


def test_distance_table_and_report():
  lines = [
    {"step": 1, "real_l1": 1.0, "fake_l1": 0.5, "k": 0.0, "m_global": 2.0},
    {"step": 2, "real_l1": 3.0, "fake_l1": 0.5, "k": 0.1, "m_global": 1.0},
    {"step": 2, "test_loss": 9.0},
  ]
  row = began_report.distance_table(lines)
  assert row == {"real_l1_mean": 2.0, "real_l1_std": 1.0, "fake_l1_mean": 0.5, "fake_l1_std": 0.0}
  with tempfile.TemporaryDirectory() as root:
    run = os.path.join(root, "run")
    os.makedirs(run)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
      f.writelines(json.dumps(line) + "\n" for line in lines)
    paths = began_eval.write_report({"a": run}, os.path.join(root, "out"))
    assert all(os.path.exists(p) for p in paths.values())
    with open(os.path.join(root, "out", "distances.json")) as f:
      table = json.load(f)
    row = table["rows"][0]
    assert row["final_m_global"] == 1.0 and row["real_l1_mean"] == 2.0
