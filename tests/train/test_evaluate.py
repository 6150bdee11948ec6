"""loop.evaluate with each trainer's eval step: test scores do not depend on the eval batch size."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import perceptual
from train import began as began_train
from train import calibrate, data, loop, sharding, twoafc_data
from train import draw as draw_train
from train import vae as vae_train

EXAMPLES = 13
# (devices, eval batch size): 13 examples as 7 + 6 (padding 1), 8 + 5 (padding 3), one batch
# padded with 3 copies of example 0, and one padded with 51.
SIZES = ((1, 7), (8, 8), (8, 16), (8, 64))


def _images(size, channels, *, seed=0):
  """uint8 images of different mean brightness (they move Watson's batch-mean luminance)."""
  rng = np.random.default_rng(seed)
  shape = (EXAMPLES, size, size, channels)
  brightness = rng.uniform(0.1, 1.0, (EXAMPLES, 1, 1, 1))
  return (255 * rng.uniform(size=shape) * brightness).astype(np.uint8)


def _scores_by_batch_size(eval_step, state, split, consts):
  scores = []
  for devices, batch_size in SIZES:
    mesh = sharding.data_mesh(jax.devices()[:devices])
    state, consts = jax.device_put((state, consts), sharding.replicated(mesh))
    scores.append(
      loop.evaluate(eval_step, state, split, batch_size=batch_size, mesh=mesh, consts=consts)
    )
  return scores


def _assert_all_equal(scores, names):
  assert names <= set(scores[0]), sorted(scores[0])
  for (_, batch_size), other in zip(SIZES[1:], scores[1:], strict=True):
    assert set(other) == set(scores[0])
    for name, value in scores[0].items():
      np.testing.assert_allclose(
        other[name], value, rtol=1e-6, err_msg=f"{name}: batch {batch_size} vs {SIZES[0][1]}"
      )


@pytest.mark.parametrize("name", ["watson_dct", "watson_dft"])
def test_per_image_is_the_value_of_a_batch_of_one(name):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(size=(3, 16, 16, 3)) * np.array([0.2, 0.6, 1.0])[:, None, None, None])
  y = jnp.clip(x + 0.05 * jnp.asarray(rng.normal(size=x.shape)), 0, 1)
  for loss in (perceptual.LOSSES[name], perceptual.multi_distance({"l1": 1.0, name: 2.0})):
    p = loss.params(3)
    batch = jax.jit(lambda x, y, loss=loss, p=p: loss(x, y, params=p))
    per_image = jax.jit(lambda x, y, loss=loss, p=p: loss.per_image(x, y, params=p))(x, y)
    alone = jnp.concatenate([batch(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(per_image, alone, rtol=1e-6)
    assert not np.allclose(batch(x, y), alone, rtol=1e-4)  # the batch form pools


def test_vae_scores_every_metric_the_same_at_any_eval_batch_size():
  config = vae_train.resolve(vae_train.Config(loss="watson_dft", arch="tiny", workdir="unused"))
  model, tx, state = vae_train.create(config, steps_per_epoch=1)
  loss = perceptual.LOSSES[config.loss]
  _, eval_step = vae_train.make_steps(model, tx, loss, config.loss_weight)
  consts = {"loss": loss.params(1), "metrics": vae_train.metric_params(1)}
  scores = _scores_by_batch_size(eval_step, state, data.Split(_images(32, 1), None), consts)
  _assert_all_equal(scores, {"loss", "rec", "kld", "psnr", "watson_dct", "watson_dft", "ssim"})


def test_draw_noise_follows_the_image_not_its_row():
  config = draw_train.resolve(
    draw_train.Config(loss="watson_dft", glimpses=2, lstm_size=8, latent=4, workdir="unused")
  )
  model, tx, state = draw_train.create(config)
  _, eval_step = draw_train.make_steps(model, tx, config)
  consts = perceptual.LOSSES["watson_dft"].params(1)
  scores = _scores_by_batch_size(eval_step, state, data.Split(_images(32, 1), None), consts)
  _assert_all_equal(scores, {"loss", "kl", "distortion", "psnr"})


def test_began_z_follows_the_image_not_its_row():
  config = began_train.resolve(
    began_train.Config(image_size=16, num_filters=4, hidden_size=8, workdir="unused")
  )
  networks, txs, state = began_train.create(config)
  distance = perceptual.multi_distance(began_train.weights(config))
  parts = began_train.components(3)
  _, eval_step = began_train.make_steps(
    networks, txs, distance, parts, gamma=config.gamma, lambda_k=0.0, latent=config.hidden_size
  )
  consts = {
    "distance": distance.params(3),
    "components": {name: loss.params(3) for name, loss in parts.items()},
  }
  scores = _scores_by_batch_size(eval_step, state, data.Split(_images(16, 3), None), consts)
  _assert_all_equal(scores, {"loss", "loss_real", "loss_fake", "real_l1"})


def test_calibrate_watson_scores_each_pair_on_its_own():
  dataset = twoafc_data.load("synthetic", channels=3, num_train=8, num_test=EXAMPLES)
  metric = calibrate.METRICS["watson_dft"]
  _, eval_step = calibrate.make_steps(metric, optax.sgd(0.0), 0.0)
  # g = 1: a steeper sigmoid than at init (g = 0), so the loss reacts more to the distances.
  params = {"metric": metric.initial("paper_2019", 3), "g": jnp.ones(())}
  state = loop.TrainState(jnp.zeros((), jnp.int32), params, ())
  scores = _scores_by_batch_size(eval_step, state, dataset.test, metric.consts(3))
  _assert_all_equal(scores, {"loss", "score"})
