"""Tests for models/began.py: network shapes, the BEGAN losses, k_t and M_global."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import began


def _l1(x, y):
  return jnp.mean(jnp.abs(x - y), axis=(1, 2, 3))


@pytest.mark.parametrize("size, stages", [(8, 1), (16, 2), (64, 4), (128, 5)])
def test_num_stages(size, stages):
  assert began.num_stages(size) == stages


@pytest.mark.parametrize("size", [4, 48, 100])
def test_num_stages_rejects_sizes_that_do_not_halve_to_8(size):
  with pytest.raises(ValueError, match="8 \\* 2\\^k"):
    began.num_stages(size)


@pytest.mark.parametrize("size", [16, 64])
def test_shapes_and_filter_growth(size):
  n, hidden, latent = 4, 8, 6
  gen = began.Generator(image_size=size, channels=3, num_filters=n)
  disc = began.Discriminator(image_size=size, channels=3, num_filters=n, hidden_size=hidden)

  @jax.jit
  def run(key):
    kz, kg, kd = jax.random.split(key, 3)
    z = began.sample_latent(kz, 2, latent)
    g_params = gen.init(kg, z)
    fake = gen.apply(g_params, z)
    d_params = disc.init(kd, fake)
    return z, fake, disc.apply(d_params, fake), g_params, d_params

  z, fake, reconstruction, g_params, d_params = run(jax.random.key(0))
  chex.assert_shape([fake, reconstruction], (2, size, size, 3))
  chex.assert_tree_all_finite((fake, reconstruction))
  assert float(z.min()) >= -1.0 and float(z.max()) <= 1.0

  stages = began.num_stages(size)
  enc = d_params["params"]["encoder"]
  convs = [enc[f"Conv_{i}"]["kernel"].shape for i in range(1 + 3 * stages - 1)]
  # First conv to n, then stage s has filters s * n (linear growth), 3x3 kernels throughout.
  assert all(k[:2] == (3, 3) for k in convs)
  assert [k[-1] for k in convs] == [n] + [
    n * (s + 1) for s in range(stages) for _ in range(3 if s < stages - 1 else 2)
  ]
  # The FC to h sees the 8 x 8 x (stages * n) map: every stage but the last halves the size.
  assert enc["Dense_0"]["kernel"].shape == (8 * 8 * stages * n, hidden)
  gen_dec = g_params["params"]["decoder"]
  assert gen_dec["Dense_0"]["kernel"].shape == (latent, 8 * 8 * n)
  assert len([k for k in gen_dec if k.startswith("Conv")]) == 2 * stages + 1


def test_decoder_upsamples_by_nearest_neighbour():
  """A 1-stage-deeper decoder's first upsampling repeats pixels: check it on the output of a
  decoder whose convolutions are identities and whose FC emits a known 8x8 map."""
  dec = began.Decoder(image_size=16, channels=1, num_filters=1)
  code = jnp.arange(64.0).reshape(1, 64) / 64.0
  params = dec.init(jax.random.key(0), code)

  def identity(path, p):
    name = jax.tree_util.keystr(path)
    if "Dense" in name:
      return jnp.eye(64) if "kernel" in name else jnp.zeros_like(p)
    if "kernel" in name:
      return jnp.zeros_like(p).at[1, 1].set(1.0)
    return jnp.zeros_like(p)

  params = jax.tree_util.tree_map_with_path(identity, params)
  out = jax.jit(dec.apply)(params, code)
  # ELU is the identity on these positive values, so the output is the upsampled map.
  base = code.reshape(8, 8)
  np.testing.assert_allclose(out[0, :, :, 0], np.repeat(np.repeat(base, 2, 0), 2, 1), rtol=1e-6)


def test_encoder_rejects_wrong_size():
  with pytest.raises(ValueError, match="image_size"):
    began.Discriminator(image_size=16, num_filters=2, hidden_size=2).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3))
    )


def test_losses_match_hand_computation():
  x = jnp.full((2, 8, 8, 3), 0.5)
  rec = x.at[0].add(0.25).at[1].add(-0.1)
  np.testing.assert_allclose(began.autoencoder_loss(x, rec, distance=_l1), [0.25, 0.1], rtol=1e-5)
  loss_real, loss_fake, k = 0.3, 0.2, 0.4
  np.testing.assert_allclose(began.discriminator_loss(loss_real, loss_fake, k), 0.3 - 0.4 * 0.2)
  np.testing.assert_allclose(began.generator_loss(loss_fake), 0.2)
  # k_t is a constant in L_D: its gradient w.r.t. k is zero, w.r.t. L(G(z)) it is -k.
  dk, dfake = jax.grad(began.discriminator_loss, argnums=(2, 1))(loss_real, loss_fake, k)
  assert float(dk) == 0.0
  np.testing.assert_allclose(dfake, -k)


def test_convergence_measure():
  np.testing.assert_allclose(began.convergence_measure(0.3, 0.2, gamma=0.5), 0.3 + 0.05)
  np.testing.assert_allclose(began.convergence_measure(0.3, 0.1, gamma=0.5), 0.3 + 0.05)
  np.testing.assert_allclose(began.convergence_measure(0.3, 0.21, gamma=0.7), 0.3, atol=1e-7)


def test_k_follows_the_update_rule_and_stays_in_unit_interval():
  rng = np.random.default_rng(0)
  loss_real = rng.uniform(0.0, 1.0, 400).astype(np.float32)
  # Large fake losses drive k down to 0, small ones up to 1: both clips are exercised.
  loss_fake = np.concatenate([rng.uniform(0.8, 1.0, 200), rng.uniform(0.0, 0.05, 200)])
  loss_fake = loss_fake.astype(np.float32)
  lambda_k, gamma = 0.05, 0.7

  @jax.jit
  def run(k0):
    def body(k, losses):
      k_next = began.update_k(k, *losses, gamma=gamma, lambda_k=lambda_k)
      return k_next, k_next

    return jax.lax.scan(body, k0, (loss_real, loss_fake))[1]

  ks = np.asarray(run(jnp.float32(0.0)))
  k, want = 0.0, []
  for lr, lf in zip(loss_real, loss_fake, strict=True):
    k = min(max(k + lambda_k * (gamma * float(lr) - float(lf)), 0.0), 1.0)
    want.append(k)
  np.testing.assert_allclose(ks, want, atol=1e-6)
  assert ks.min() >= 0.0 and ks.max() <= 1.0
  assert ks.min() == 0.0 and ks.max() == 1.0


def test_one_began_step_has_finite_gradients():
  gen = began.Generator(image_size=16, channels=3, num_filters=2)
  disc = began.Discriminator(image_size=16, channels=3, num_filters=2, hidden_size=4)
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  z = began.sample_latent(jax.random.key(1), 2, 4)
  g_params = gen.init(jax.random.key(2), z)
  d_params = disc.init(jax.random.key(3), x)

  @jax.jit
  def step(g_params, d_params, k):
    def d_loss(d):
      fake = jax.lax.stop_gradient(gen.apply(g_params, z))
      loss_real = began.autoencoder_loss(x, disc.apply(d, x), distance=_l1).mean()
      loss_fake = began.autoencoder_loss(fake, disc.apply(d, fake), distance=_l1).mean()
      return began.discriminator_loss(loss_real, loss_fake, k), (loss_real, loss_fake)

    def g_loss(g):
      fake = gen.apply(g, z)
      return began.generator_loss(
        began.autoencoder_loss(fake, disc.apply(d_params, fake), distance=_l1).mean()
      )

    (_, (loss_real, loss_fake)), d_grads = jax.value_and_grad(d_loss, has_aux=True)(d_params)
    g_grads = jax.grad(g_loss)(g_params)
    return d_grads, g_grads, began.update_k(k, loss_real, loss_fake), loss_real, loss_fake

  d_grads, g_grads, k, loss_real, loss_fake = step(g_params, d_params, jnp.float32(0.0))
  chex.assert_tree_all_finite((d_grads, g_grads))
  np.testing.assert_allclose(k, np.clip(0.001 * (0.5 * loss_real - loss_fake), 0, 1), atol=1e-9)


def test_vertolli_loss_weights_are_recorded():
  assert began.VERTOLLI_LOSS_WEIGHTS["began"] == {"l1": 1.0, "gmsm": 0.0, "chroma": 0.0}
  assert began.VERTOLLI_LOSS_WEIGHTS["scaled_began_gmsm"] == {"l1": 2.0, "gmsm": 1.0, "chroma": 0.0}
  assert all(set(w) == {"l1", "gmsm", "chroma"} for w in began.VERTOLLI_LOSS_WEIGHTS.values())
