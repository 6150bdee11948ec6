"""train.deepsim_report and the generator inputs of models.deepsim: the normalised inversion
error on hand-checked cases, codes and shapes."""

import jax.numpy as jnp
import numpy as np
import pytest

from models import deepsim as models
from train import deepsim_report as deepsim


def test_normalised_error_two_points():
  a = np.array([[0.0, 0.0], [3.0, 4.0]])  # the two references are 5 apart
  b = np.zeros_like(a)  # errors 0 and 5: mean 2.5
  assert deepsim.normalised_error(a, b) == pytest.approx(0.5)
  assert deepsim.normalised_error(a, a) == 0.0


def test_normalised_error_three_points_any_shape():
  a = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  b = a + np.array([0.0, 2.0])  # every reconstruction 2 away
  spread = (1 + 1 + np.sqrt(2)) / 3  # mean over distinct pairs
  assert deepsim.normalised_error(a, b) == pytest.approx(2 / spread)
  images = a.reshape(3, 1, 2, 1)  # norms are taken over all but the first axis
  assert deepsim.normalised_error(images, b.reshape(3, 1, 2, 1)) == pytest.approx(2 / spread)


def test_normalised_error_rejects_bad_input():
  with pytest.raises(ValueError, match="at least two"):
    deepsim.normalised_error(np.zeros((1, 3)), np.zeros((1, 3)))
  with pytest.raises(ValueError, match="all references are equal"):
    deepsim.normalised_error(np.ones((3, 2)), np.zeros((3, 2)))


def test_interpolate_endpoints():
  a, b = jnp.zeros((2, 3)), jnp.ones((2, 3))
  path = deepsim.interpolate(a, b, steps=5).reshape(2, 5, 3)
  np.testing.assert_allclose(path[:, 0], 0.0)
  np.testing.assert_allclose(path[:, -1], 1.0)
  np.testing.assert_allclose(path[0, 2], 0.5)


@pytest.mark.parametrize("layer,shape", [("conv5", (3, 3, 256)), ("pool5", (1, 1, 256))])
def test_input_shape_at_64(layer, shape):
  assert models.input_shape(layer, 64) == shape


def test_input_shape_rejects_empty_pool5():
  with pytest.raises(ValueError, match="pool5"):
    models.input_shape("pool5", 32)


def test_reencode_chain():
  x = jnp.full((2, 4, 4, 3), 0.5)
  chain = deepsim.reencode(lambda v: v * 2, lambda z: z, x, rounds=2)
  assert chain.shape == (3, 2, 4, 4, 3)
  np.testing.assert_allclose(chain[1], 1.0)
  np.testing.assert_allclose(chain[2], 1.0)  # decodes are clipped to [0, 1]
