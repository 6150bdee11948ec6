"""models.deepsim: network shapes, the GAN losses, the KL term and the discriminator-skip rule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import deepsim


@pytest.mark.parametrize("size,stages", [(8, 1), (16, 2)])
def test_generator_shape_and_linear_output(size, stages):
  assert deepsim.num_stages(size) == stages
  gen = deepsim.Generator(size, 3, width=4, hidden=8)
  code = jnp.ones((2, 3, 3, 5))  # conv-like features are flattened
  params = gen.init(jax.random.key(0), code)
  out = jax.jit(gen.apply)(params, code)
  chex.assert_shape(out, (2, size, size, 3))
  chex.assert_tree_all_finite(out)
  up = [k for k in params["params"] if k.startswith("UpConv")]
  assert len(up) == stages
  # Linear output: moving the last convolution's bias moves every output pixel by as much, also
  # below zero (a ReLU, leaky ReLU, tanh or sigmoid there would bend it).
  last = max((k for k in params["params"] if k.startswith("Conv_")), key=lambda k: int(k[5:]))
  shift = jnp.array([-5.0, 0.5, 3.0])
  p = params["params"]
  shifted = {"params": {**p, last: {**p[last], "bias": p[last]["bias"] + shift}}}
  np.testing.assert_allclose(jax.jit(gen.apply)(shifted, code), out + shift, atol=1e-5)


def test_stages_of_larger_images():
  assert deepsim.num_stages(64) == 4 and deepsim.num_stages(256) == 6


@pytest.mark.parametrize("size", [4, 24, 48])
def test_generator_rejects_sizes_it_cannot_reach(size):
  with pytest.raises(ValueError, match="4 \\* 2\\^k"):
    deepsim.num_stages(size)


def test_upconv_doubles_the_side():
  layer = deepsim.UpConv(6)
  x = jnp.ones((1, 5, 7, 2))
  out = layer.apply(layer.init(jax.random.key(0), x), x)
  chex.assert_shape(out, (1, 10, 14, 6))


@pytest.mark.parametrize("condition", [None, (1, 1, 7)])
def test_discriminator_two_logits_and_dropout(condition):
  disc = deepsim.Discriminator(width=4, hidden=8)
  x = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3))
  cond = None if condition is None else jnp.ones((3, *condition))
  params = disc.init(jax.random.key(0), x, cond)
  convs = [k for k in params["params"] if k.startswith("Conv")]
  assert len(convs) == 5
  logits = jax.jit(lambda p, v, c: disc.apply(p, v, c))(params, x, cond)
  chex.assert_shape(logits, (3, 2))
  # Without train, dropout is off even when a dropout key is passed: every key gives the logits.
  for key in (1, 2):
    scored = disc.apply(params, x, cond, rngs={"dropout": jax.random.key(key)})
    np.testing.assert_allclose(scored, logits, rtol=1e-5, atol=1e-6)
  a = disc.apply(params, x, cond, train=True, rngs={"dropout": jax.random.key(1)})
  b = disc.apply(params, x, cond, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b)  # dropout 0.5 is active while training


def test_encoder_and_sampling_shapes():
  enc = deepsim.Encoder(latent=6, width=4)
  x = jnp.ones((2, 32, 32, 3))
  mu, log_sigma = enc.apply(enc.init(jax.random.key(0), x), x)
  chex.assert_shape((mu, log_sigma), (2, 6))
  z = deepsim.sample(jax.random.key(0), jnp.zeros((4000, 2)), jnp.log(2.0) * jnp.ones((4000, 2)))
  np.testing.assert_allclose(np.std(z), 2.0, rtol=0.05)


def test_kl_closed_form():
  mu = jnp.array([[0.0, 0.0], [1.0, -2.0]])
  log_sigma = jnp.array([[0.0, 0.0], [jnp.log(2.0), 0.0]])
  # 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2): (1 + 4 - 1 - 2 ln 2) + (4 + 1 - 1 - 0)
  want = [0.0, 0.5 * ((1 + 4 - 1 - 2 * np.log(2)) + 4)]
  np.testing.assert_allclose(jax.jit(deepsim.kl_divergence)(mu, log_sigma), want, rtol=1e-6)


def test_gan_losses():
  even = jnp.zeros((2, 2))
  np.testing.assert_allclose(deepsim.discriminator_loss(even, even), 2 * np.log(2), rtol=1e-6)
  np.testing.assert_allclose(deepsim.adversarial_loss(even), np.log(2), rtol=1e-6)
  sure_real = jnp.array([[-20.0, 20.0]])
  assert float(deepsim.adversarial_loss(sure_real)[0]) < 1e-6
  assert float(deepsim.discriminator_loss(sure_real, -sure_real)[0]) < 1e-6


def test_discriminator_skip_rule():
  rule = jax.jit(lambda d, a, r: deepsim.discriminator_updates(d, a, ratio=r))
  assert not bool(rule(0.05, 1.0, 0.1))  # D far ahead: L_discr / L_adv = 0.05 < 0.1, paused
  assert bool(rule(0.1, 1.0, 0.1))
  assert bool(rule(1.4, 0.7, 0.1))
  assert bool(rule(0.0, 0.0, 0.1))  # no division by zero
