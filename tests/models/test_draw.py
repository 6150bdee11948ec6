"""Tests for models/draw.py: filterbanks against the paper's formula, the scan, KL, losses."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models import draw

# Tiny config; read 2x2 and write 3x3 differ so that a swapped N would change shapes.
SMALL = dict(
  height=8,
  width=6,
  channels=2,
  steps=3,
  encoder_size=8,
  decoder_size=8,
  latent_size=4,
  read_size=2,
  write_size=3,
)


def _filterbank_loop(center, delta, sigma2, size, length):
  """Gregor et al. (2015) eqs. 19-20 and 25-26, written out with 1-based i and a."""
  f = np.zeros((size, length))
  for i in range(1, size + 1):
    mu = center + (i - size / 2 - 0.5) * delta
    for a in range(1, length + 1):
      f[i - 1, a - 1] = math.exp(-((a - mu) ** 2) / (2 * sigma2))
    f[i - 1] /= f[i - 1].sum()
  return f


def test_filterbank_matches_loop_over_the_paper_formula():
  rng = np.random.default_rng(0)
  center = rng.uniform(0, 13, 4).astype(np.float32)
  delta = rng.uniform(0.3, 3, 4).astype(np.float32)
  sigma2 = rng.uniform(0.3, 4, 4).astype(np.float32)
  got = jax.jit(draw.filterbank, static_argnames=("size", "length"))(
    center, delta, sigma2, size=5, length=12
  )
  want = np.stack([_filterbank_loop(*p, 5, 12) for p in zip(center, delta, sigma2, strict=True)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_attention_filters_map_linear_outputs_as_in_the_paper():
  params = np.array([[0.3, -0.2, 0.4, -0.5, 0.1], [-0.9, 0.7, -1.0, 0.2, -0.3]], np.float32)
  height, width, n = 7, 11, 4
  fy, fx, gamma = jax.jit(draw.attention_filters, static_argnames=("height", "width", "size"))(
    params, height=height, width=width, size=n
  )
  for b, (gx, gy, log_s2, log_d, log_g) in enumerate(params.astype(np.float64)):
    delta = (max(height, width) - 1) / (n - 1) * math.exp(log_d)
    sigma2 = math.exp(log_s2)
    want_x = _filterbank_loop((width + 1) / 2 * (gx + 1), delta, sigma2, n, width)
    want_y = _filterbank_loop((height + 1) / 2 * (gy + 1), delta, sigma2, n, height)
    np.testing.assert_allclose(fx[b], want_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fy[b], want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gamma[b], math.exp(log_g), rtol=1e-6)


def test_centred_grid_is_symmetric():
  """g = 0 must centre the grid: F[i, a] = F[N + 1 - i, A + 1 - a] (an off-by-one breaks it)."""
  fy, fx, _ = draw.attention_filters(np.zeros((1, 5), np.float32), height=9, width=12, size=5)
  np.testing.assert_allclose(fx[0], fx[0, ::-1, ::-1], atol=1e-6)
  np.testing.assert_allclose(fy[0], fy[0, ::-1, ::-1], atol=1e-6)


def test_write_is_the_adjoint_of_read():
  kx, kw, kp = jax.random.split(jax.random.key(0), 3)

  @jax.jit
  def both_sides(x, w, params):
    fy, fx, _ = draw.attention_filters(params, height=8, width=6, size=4)
    return jnp.sum(draw.read_glimpse(x, fy, fx) * w), jnp.sum(x * draw.write_patch(w, fy, fx))

  lhs, rhs = both_sides(
    jax.random.uniform(kx, (2, 8, 6, 3)),
    jax.random.normal(kw, (2, 4, 4, 3)),
    0.5 * jax.random.normal(kp, (2, 5)),
  )
  np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_gaussian_kl_matches_closed_form_with_full_covariance():
  rng = np.random.default_rng(1)
  mu = rng.normal(size=(3, 5))
  log_sigma = rng.normal(scale=0.5, size=(3, 5))
  got = jax.jit(draw.gaussian_kl)(mu.astype(np.float32), log_sigma.astype(np.float32))
  for b in range(3):
    cov = np.diag(np.exp(2 * log_sigma[b]))
    want = 0.5 * (np.trace(cov) + mu[b] @ mu[b] - 5 - np.log(np.linalg.det(cov)))
    np.testing.assert_allclose(got[b], want, rtol=1e-5)


@pytest.fixture(scope="module")
def small():
  model = draw.Draw(**SMALL)
  x = jax.random.uniform(jax.random.key(0), (2, 8, 6, 2))
  params = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))

  def loss_fn(p, key):
    out = model.apply(p, x, key)
    loss, metrics = draw.draw_loss(x, out)
    return jnp.mean(loss), (out, loss, metrics)

  # One compiled forward + backward pass serves the shape, loss and gradient tests.
  forward = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  generate = jax.jit(lambda p, key: model.apply(p, key, 2, method=draw.Draw.generate))
  return x, params, forward, generate


def test_forward_shapes_and_steps(small):
  _, params, forward, _ = small
  (_, (out, _, _)), _ = forward(params, jax.random.key(3))
  chex.assert_shape([out.logits, out.image], (2, 8, 6, 2))
  chex.assert_shape(out.kl, (2, 3))
  chex.assert_shape(out.canvases, (3, 2, 8, 6, 2))
  chex.assert_shape([out.mu, out.log_sigma], (3, 2, 4))
  chex.assert_tree_all_finite(out)
  np.testing.assert_allclose(out.image, jax.nn.sigmoid(out.logits), rtol=1e-6)
  np.testing.assert_allclose(out.canvases[-1], out.image, rtol=1e-6)
  # Every step writes something: consecutive canvases differ.
  assert all(float(jnp.abs(out.canvases[t + 1] - out.canvases[t]).max()) > 0 for t in range(2))
  np.testing.assert_allclose(out.kl, draw.gaussian_kl(out.mu, out.log_sigma).T, rtol=1e-6)
  assert float(out.kl.min()) >= 0.0


def test_parameters_are_shared_across_steps():
  x = jnp.zeros((1, 8, 6, 2))
  shapes = [
    jax.tree.map(
      jnp.shape,
      jax.eval_shape(
        draw.Draw(**{**SMALL, "steps": t}).init, jax.random.key(0), x, jax.random.key(1)
      ),
    )
    for t in (1, 5)
  ]
  assert shapes[0] == shapes[1]


def test_sampling_shape_range_and_determinism(small):
  _, params, _, generate = small
  image, canvases = generate(params, jax.random.key(5))
  chex.assert_shape(image, (2, 8, 6, 2))
  chex.assert_shape(canvases, (3, 2, 8, 6, 2))
  assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
  # The same key draws the same images in a fresh trace (the jitted program is compiled once,
  # so calling it twice could not tell): the noise comes from the key alone.
  again = draw.Draw(**SMALL).apply(params, jax.random.key(5), 2, method=draw.Draw.generate)[0]
  np.testing.assert_allclose(image, again, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(image - generate(params, jax.random.key(6))[0]).max()) > 0


def test_sampling_uses_the_trained_decoder(small):
  """With Q(z|x) = N(0, I) the posterior sample equals the prior sample of the same key, so
  reconstruction and generation must draw the same canvases."""
  _, params, forward, generate = small
  params = jax.tree_util.tree_map_with_path(
    lambda path, p: jnp.zeros_like(p) if "posterior" in jax.tree_util.keystr(path) else p, params
  )
  (_, (out, _, _)), _ = forward(params, jax.random.key(7))
  _, canvases = generate(params, jax.random.key(7))
  np.testing.assert_allclose(canvases, out.canvases, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.kl, 0.0, atol=1e-6)


def test_draw_loss_bce_and_custom_distance(small):
  x, params, forward, _ = small
  (_, (out, loss, metrics)), _ = forward(params, jax.random.key(3))
  by_hand = -jnp.sum(
    x * jnp.log(out.image) + (1 - x) * jnp.log(1 - out.image), axis=(1, 2, 3)
  ) + out.kl.sum(-1)
  np.testing.assert_allclose(loss, by_hand, rtol=1e-5)
  np.testing.assert_allclose(
    metrics["distortion"], draw.binary_cross_entropy(x, out.image), rtol=1e-5
  )
  mse = lambda a, b: jnp.mean(jnp.square(a - b), axis=(1, 2, 3))
  loss, metrics = draw.draw_loss(x, out, distance=mse, weight=draw.DISTANCE_WEIGHTS["mse"])
  np.testing.assert_allclose(loss, out.kl.sum(-1) + 10.0 * mse(x, out.image), rtol=1e-6)


def test_gradients_are_finite(small):
  _, params, forward, _ = small
  _, grads = forward(params, jax.random.key(3))
  chex.assert_tree_all_finite(grads)
  assert float(optax.tree.norm(grads)) > 0


def test_binary_cross_entropy_is_finite_at_saturation():
  x = jnp.array([0.0, 1.0, 0.3]).reshape(1, 1, 3, 1)
  y = jnp.array([1.0, 0.0, 0.3]).reshape(1, 1, 3, 1)
  assert bool(jnp.isfinite(draw.binary_cross_entropy(x, y)).all())
  logits = jnp.array([200.0, -200.0, 0.0]).reshape(1, 1, 3, 1)
  np.testing.assert_allclose(
    draw.binary_cross_entropy_with_logits(x, logits), [200.0 + 200.0 + math.log(2.0)], rtol=1e-6
  )


def test_clip_each_by_norm_clips_every_leaf_separately():
  updates = {"w": jnp.full((2, 2), 10.0), "b": jnp.array([3.0, 4.0]), "z": jnp.zeros(3)}
  tx = draw.clip_each_by_norm(10.0)
  clipped, _ = jax.jit(tx.update)(updates, tx.init(updates))
  np.testing.assert_allclose(jnp.linalg.norm(clipped["w"]), 10.0, rtol=1e-6)  # norm 20 -> 10
  np.testing.assert_allclose(clipped["w"], 5.0, rtol=1e-6)
  np.testing.assert_array_equal(clipped["b"], updates["b"])  # norm 5 is left alone
  np.testing.assert_array_equal(clipped["z"], 0.0)  # no NaN from 0 / 0
  global_clip, _ = optax.clip_by_global_norm(10.0).update(updates, None)
  assert float(jnp.abs(global_clip["b"] - updates["b"]).max()) > 0  # the global clip differs


def test_bad_input_raises():
  with pytest.raises(ValueError, match="height, width and channels"):
    draw.Draw(**SMALL).init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)), jax.random.key(1))
  with pytest.raises(ValueError, match="read_size"):
    draw.Draw(**{**SMALL, "read_size": 1}).init(
      jax.random.key(0), jnp.zeros((1, 8, 6, 2)), jax.random.key(1)
    )
  with pytest.raises(ValueError, match="max_norm"):
    draw.clip_each_by_norm(0.0)
