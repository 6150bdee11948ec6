"""Tests for models.srcnn: shapes, padding modes and Dong et al.'s initialisation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import srcnn
from models.srcnn import ARCHS


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_shapes_abstract(name):
  model = ARCHS[name]()
  x = jax.ShapeDtypeStruct((2, 33, 33, 1), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  y = jax.eval_shape(model.apply, params, x)
  b = model.border
  assert y.shape == (2, 33 - 2 * b, 33 - 2 * b, 1)


def test_border():
  assert ARCHS["srcnn955"]().border == 0
  # 9-5-5 without padding: 4 + 2 + 2 pixels per side, so 33x33 crops give 17x17 outputs.
  assert ARCHS["srcnn955_valid"]().border == 8
  assert srcnn.SRCNN(kernel_sizes=(9, 1, 5), padding="VALID").border == 6


def test_init_statistics():
  model = ARCHS["srcnn955"]()
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 33, 33, 1)))["params"]
  shapes = {name: p["kernel"].shape for name, p in params.items()}
  assert shapes == {
    "Conv_0": (9, 9, 1, 64),
    "Conv_1": (5, 5, 64, 32),
    "Conv_2": (5, 5, 32, 1),
  }
  for name, p in params.items():
    kernel = np.asarray(p["kernel"], np.float64)
    # A sample std of n Gaussian draws is within 5 / sqrt(2 n) relative error with overwhelming
    # probability; n >= 800 here.
    tol = 5.0 / np.sqrt(2 * kernel.size)
    assert abs(kernel.std() / srcnn.SRCNN_INIT_STD - 1.0) < tol, name
    assert abs(kernel.mean()) < 5 * srcnn.SRCNN_INIT_STD / np.sqrt(kernel.size), name
    np.testing.assert_array_equal(p["bias"], 0.0)


def _conv_numpy(x, kernel, bias, padding):
  """Cross-correlation of NHWC `x` with an HWIO `kernel` (odd sides), zero-padded for SAME."""
  kh, kw = kernel.shape[:2]
  if padding == "SAME":
    x = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = sum(
    np.einsum("bhwi,io->bhwo", x[:, i : i + h, j : j + w], kernel[i, j])
    for i in range(kh)
    for j in range(kw)
  )
  return out + bias


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_forward(padding):
  """conv-ReLU-conv-ReLU-conv with a linear output, against the same layers written in numpy."""
  model = srcnn.SRCNN(kernel_sizes=(3, 1, 3), features=(4, 2), padding=padding)
  x = jax.random.uniform(jax.random.key(1), (3, 12, 12, 1))
  params = jax.jit(model.init)(jax.random.key(2), x)
  # Weights of unit gain instead of Dong et al.'s 0.001, and non-zero biases, so that the ReLUs
  # see both signs and the output takes both signs.
  keys = iter(jax.random.split(jax.random.key(3), 6))
  params = {
    "params": {
      name: {
        "kernel": jax.random.normal(next(keys), layer["kernel"].shape)
        / np.sqrt(np.prod(layer["kernel"].shape[:3])),
        "bias": 0.5 * jax.random.normal(next(keys), layer["bias"].shape),
      }
      for name, layer in params["params"].items()
    }
  }
  y = jax.jit(model.apply)(params, x)
  chex.assert_shape(y, (3, 12 - 2 * model.border, 12 - 2 * model.border, 1))
  want = np.asarray(x, np.float64)
  for i in range(3):
    layer = jax.tree.map(lambda p: np.asarray(p, np.float64), params["params"][f"Conv_{i}"])
    want = _conv_numpy(want, layer["kernel"], layer["bias"], padding)
    want = np.maximum(want, 0.0) if i < 2 else want
  assert want.min() < 0 < want.max()  # the linear output is not clipped at 0
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_errors():
  model = ARCHS["srcnn955_valid"]()
  with pytest.raises(ValueError, match="at least 17x17"):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32))
  with pytest.raises(ValueError, match="padding"):
    jax.eval_shape(srcnn.SRCNN(padding="FULL").init, jax.random.key(0), jnp.zeros((1, 33, 33, 1)))
  with pytest.raises(ValueError, match="valid names"):
    srcnn.get_arch("srcnn")
