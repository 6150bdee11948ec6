"""models.layers.output_bias, used by the DeePSiM and BEGAN generators (and BEGAN's decoder)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import began, deepsim, layers
from train import data

MEAN = (0.5, 0.25, 0.125)


def _last_bias(params: dict) -> np.ndarray:
  convs = [k for k in params if k.startswith("Conv_")]
  return np.asarray(params[max(convs, key=lambda k: int(k[5:]))]["bias"])


def test_output_bias_values_and_errors():
  init = layers.output_bias(MEAN, 3)
  np.testing.assert_array_equal(init(jax.random.key(0), (3,)), np.asarray(MEAN, np.float32))
  assert not np.any(layers.output_bias(None, 3)(jax.random.key(0), (3,), jnp.float32))
  with pytest.raises(ValueError, match="2 values for 3 channels"):
    layers.output_bias((0.5, 0.5), 3)


def test_generators_start_from_the_mean():
  """The untrained networks output about the mean image, not black."""
  gen = deepsim.Generator(16, 3, width=4, hidden=16, output_mean=MEAN)
  z = jnp.zeros((4, 8))
  params = gen.init(jax.random.key(0), z)
  np.testing.assert_array_equal(_last_bias(params["params"]), np.asarray(MEAN, np.float32))
  np.testing.assert_allclose(np.mean(gen.apply(params, z), axis=(0, 1, 2)), MEAN, atol=0.1)
  for module, x in (
    (began.Generator(16, 3, num_filters=4, output_mean=MEAN), jnp.zeros((2, 8))),
    (began.Discriminator(16, 3, 4, 8, output_mean=MEAN), jnp.zeros((2, 16, 16, 3))),
  ):
    params = module.init(jax.random.key(0), x)["params"]["decoder"]
    np.testing.assert_array_equal(_last_bias(params), np.asarray(MEAN, np.float32))


def test_channel_mean():
  images = np.zeros((6, 4, 4, 3), np.uint8)
  images[:, :2] = (255, 102, 51)  # half of each image: means 0.5, 0.2, 0.1
  images[5] = 255  # beyond count: not read
  split = data.Split(images, None)
  np.testing.assert_allclose(data.channel_mean(split, count=5), (0.5, 0.2, 0.1), rtol=1e-6)
