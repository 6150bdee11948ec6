"""perceptual.twoafc: predicted judgements, BCE, the 2AFC score, parameter files."""

import json
import os
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceptual import twoafc, watson


def test_predicted_judgement_closed_form_and_direction():
  d0, d1 = jnp.array([3.0, 1.0, 2.0]), jnp.array([1.0, 3.0, 2.0])
  p = jax.jit(twoafc.predicted_judgement)(d0, d1, jnp.log(2.0))
  expected = 1 / (1 + np.exp(-2.0 * np.array([0.5, -0.5, 0.0])))
  np.testing.assert_allclose(p, expected, rtol=1e-6)
  # p1 farther than p0 (d1 > d0) -> p1 predicted less likely to be judged closer.
  assert p[0] > 0.5 > p[1]


def test_zero_distances_give_half_with_finite_gradients():
  zeros = jnp.zeros(2)
  p = jax.jit(twoafc.predicted_judgement)(zeros, zeros, 0.0)
  np.testing.assert_array_equal(p, [0.5, 0.5])
  grads = jax.jit(
    jax.grad(
      lambda d0, d1, g: jnp.sum(twoafc.bce_loss(d0, d1, jnp.array([0.2, 1.0]), g)),
      argnums=(0, 1, 2),
    )  # fmt: skip
  )(zeros, zeros, 0.0)
  chex.assert_tree_all_finite(grads)


def test_bce_matches_definition_and_is_minimal_at_h():
  d0, d1, h = jnp.array([2.0, 1.0]), jnp.array([1.0, 4.0]), jnp.array([0.7, 0.1])
  p = twoafc.predicted_judgement(d0, d1, 0.3)
  expected = -(h * jnp.log(p) + (1 - h) * jnp.log(1 - p))
  np.testing.assert_allclose(jax.jit(twoafc.bce_loss)(d0, d1, h, 0.3), expected, rtol=1e-6)
  # d/dg of the BCE vanishes where the prediction equals h: pick g so that p == h for record 0.
  g = jnp.log(jnp.log(0.7 / 0.3) / (1 / 3))
  grad = jax.grad(lambda g: twoafc.bce_loss(d0[:1], d1[:1], h[:1], g)[0])(g)
  assert abs(float(grad)) < 1e-5


def test_score_formula_ties_and_bapps_convention():
  d0 = jnp.array([1.0, 2.0, 1.0, 1.0])
  d1 = jnp.array([2.0, 1.0, 1.0, 2.0])
  h = jnp.array([0.2, 0.2, 0.9, 1.0])
  s = jax.jit(twoafc.score)(d0, d1, h)
  np.testing.assert_allclose(s, [0.8, 0.2, 0.5, 0.0], rtol=1e-6)
  # BAPPS' compute_accuracy (no ties): (d1 < d0) h + (1 - (d1 < d0)) (1 - h).
  lt = np.array([0, 1, 0, 0], float)
  h = np.asarray(h)
  np.testing.assert_allclose(
    np.asarray(s)[[0, 1, 3]], (lt * h + (1 - lt) * (1 - h))[[0, 1, 3]], rtol=1e-6
  )


def test_shape_mismatch_raises():
  with pytest.raises(ValueError, match="same records"):
    twoafc.score(jnp.zeros(3), jnp.zeros(2), jnp.zeros(3))


def test_score_by_category_means_over_categories():
  out = twoafc.score_by_category(
    np.array([1.0, 0.0, 1.0, 1.0]), np.array([0, 0, 1, 1]), names=("a", "b")
  )
  assert out == {"a": 0.5, "b": 1.0, "mean": 0.75}


@pytest.mark.parametrize("kind,channels", [("dft", 1), ("dct", 3)])
def test_saved_params_load_back_with_identical_distances(kind, channels):
  init = watson.watson_params(kind, channels=channels, weights="init")
  # Perturb so that the file does not merely hold the defaults.
  params = jax.tree.map(lambda v: v + 0.1 * jnp.sin(jnp.arange(v.size).reshape(v.shape)), init)
  fn = watson.watson_dft if kind == "dft" else watson.watson_dct
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, channels))
  y = jnp.clip(x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), 0, 1)
  with tempfile.TemporaryDirectory() as d:
    path = twoafc.save_params(os.path.join(d, "fitted.json"), params)
    # `like` gives the form only: the values must come from the file.
    loaded = twoafc.load_params(path, like=init)
    with open(path) as f:
      keys = set(json.load(f))
  name = f"{'gray' if channels == 1 else 'rgb'}_watson_{'fft' if kind == 'dft' else kind}_trial0"
  assert keys == set(watson._stored_weights()["paper_2019"][name])  # the stored format's keys
  chex.assert_trees_all_equal(loaded, params)
  dist = jax.jit(lambda p: fn(x, y, params=p))
  np.testing.assert_array_equal(dist(loaded), dist(params))


def test_load_params_rejects_other_forms_and_missing_files():
  with tempfile.TemporaryDirectory() as d:
    path = twoafc.save_params(os.path.join(d, "p.json"), watson.watson_params("dct", channels=1))
    with pytest.raises(ValueError, match="same loss and channel count"):
      twoafc.load_params(path, like=watson.watson_params("dft", channels=1))
    with pytest.raises(FileNotFoundError, match="train.calibrate"):
      twoafc.load_params(os.path.join(d, "missing.json"))
