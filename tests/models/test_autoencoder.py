"""Tests for models.autoencoder: shapes and ranges of every arch, the binary bottleneck."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import autoencoder
from models.autoencoder import ARCHS

# Every arch is checked abstractly (jax.eval_shape); these run for real (fc256 has 106M
# parameters; conv512 and the snell128 variants share their code paths with conv256 and tiny_snell).
RUNNABLE = ["conv256", "tiny_fc", "tiny_conv", "tiny_snell"]


def _images(model, batch=2, seed=0):
  shape = (batch, *model.image_shape)
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_shapes_abstract(name):
  model = ARCHS[name]()
  x = jax.ShapeDtypeStruct((3, *model.image_shape), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  y = jax.eval_shape(model.apply, params, x)
  codes = jax.eval_shape(lambda p, x: model.apply(p, x, method="encode"), params, x)
  assert y.shape == x.shape
  assert codes.shape == (3, model.code_dim)


def test_paper_sizes():
  assert ARCHS["fc256"]().code_dim == 256 and ARCHS["conv512"]().code_dim == 512
  x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
  params = jax.eval_shape(ARCHS["fc256"]().init, jax.random.key(0), x)["params"]
  widths = [params[f"encoder_layers_{i}"]["kernel"].shape for i in range(5)]
  assert widths == [(1024, 8192), (8192, 4096), (4096, 2048), (2048, 1024), (1024, 512)]
  assert params["code_layer"]["kernel"].shape == (512, 256)
  assert params["output_layer"]["kernel"].shape == (8192, 1024)
  conv = jax.eval_shape(ARCHS["conv256"]().init, jax.random.key(0), x)["params"]
  # 32 -> 15 -> 6 in the encoder, so the code layer sees 6 * 6 * 64 features and the decoder
  # starts from a 6x6x64 map.
  assert conv["code_layer"]["kernel"].shape == (6 * 6 * 64, 256)
  assert conv["bridge"]["kernel"].shape == (256, 6 * 6 * 64)
  assert conv["decoder_convs_0"]["kernel"].shape == (4, 4, 64, 32)
  assert conv["decoder_convs_1"]["kernel"].shape == (4, 4, 32, 1)


def test_decoder_padding_arithmetic():
  sizes = [32]
  for _ in range(2):
    sizes.append(autoencoder.conv_output_size(sizes[-1], kernel_size=4, stride=2, padding="VALID"))
  assert sizes == [32, 15, 6]
  assert autoencoder.upsample_padding(6, 15, kernel_size=4, factor=2) == (3, 3)
  assert autoencoder.upsample_padding(15, 32, kernel_size=4, factor=2) == (2, 3)
  assert autoencoder.conv_output_size(96, kernel_size=4, stride=2, padding="SAME") == 48
  with pytest.raises(ValueError, match="larger kernel_size"):
    autoencoder.upsample_padding(10, 12, kernel_size=1, factor=2)


@pytest.mark.parametrize("name", RUNNABLE)
def test_forward_range_and_codes(name):
  model = ARCHS[name]()
  x = _images(model)

  @jax.jit
  def run(x):
    params = model.init(jax.random.key(1), x)
    codes = model.apply(params, x, method="encode")
    again = model.apply(params, codes, method="decode")
    return model.apply(params, x), codes, again

  y, codes, again = run(x)
  chex.assert_shape(y, x.shape)
  chex.assert_tree_all_finite((y, codes))
  assert float(jnp.max(jnp.abs(y))) <= 1.0
  if model.code == "binary":
    assert set(np.unique(np.asarray(codes)).tolist()) <= {-1.0, 1.0}
  # decode(encode(x)) is the forward pass.
  np.testing.assert_allclose(again, y, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny_fc", "tiny_conv"])
def test_quantize_flag(name):
  model = ARCHS[name]()
  x = _images(model, batch=4)

  @jax.jit
  def run(x):
    params = model.init(jax.random.key(2), x)
    hard = model.apply(params, x, method="encode")
    soft = model.apply(params, x, quantize=False, method="encode")
    return hard, soft, model.apply(params, x), model.apply(params, x, quantize=False)

  hard, soft, y_hard, y_soft = run(x)
  assert np.all(np.abs(np.asarray(soft)) < 1.0)
  assert not np.all(np.abs(np.asarray(soft)) == 1.0)
  np.testing.assert_array_equal(hard, np.where(np.asarray(soft) >= 0, 1.0, -1.0))
  assert not np.allclose(y_soft, y_hard)


def test_binary_tanh_exact_codes():
  x = jnp.concatenate(
    [
      jax.random.normal(jax.random.key(3), (10_000,)) * jnp.logspace(-12, 2, 10_000),
      jnp.array([0.0, -0.0, 1e-30, -1e-30, 50.0, -50.0, 0.2, -0.2]),
    ]
  )
  b = np.asarray(jax.jit(autoencoder.binary_tanh)(x))
  assert set(np.unique(b).tolist()) == {-1.0, 1.0}
  np.testing.assert_array_equal(b, np.where(np.asarray(x) >= 0, 1.0, -1.0))
  # sign(0) is +1 for both zeros.
  assert b[-8] == 1.0 and b[-7] == 1.0


def test_straight_through_gradient_is_tanh_gradient():
  x = jax.random.normal(jax.random.key(4), (64,)) * 2.0
  w = jax.random.normal(jax.random.key(5), (64,))
  g_st = jax.jit(jax.grad(lambda x: jnp.sum(w * autoencoder.binary_tanh(x))))(x)
  g_tanh = jax.jit(jax.grad(lambda x: jnp.sum(w * jnp.tanh(x))))(x)
  np.testing.assert_allclose(g_st, g_tanh, rtol=1e-6, atol=1e-7)
  # The sign itself passes gradients unchanged: binary_tanh(arctanh(h)) = sign(h) has slope 1.
  h = jnp.linspace(-0.9, 0.9, 7)
  g_sign = jax.jit(jax.grad(lambda h: jnp.sum(autoencoder.binary_tanh(jnp.arctanh(h)))))(h)
  np.testing.assert_allclose(g_sign, jnp.ones_like(h), rtol=1e-5)


def test_model_gradients_flow_through_bottleneck():
  model = ARCHS["tiny_conv"]()
  x = _images(model)
  params = jax.jit(model.init)(jax.random.key(6), x)
  grads = jax.jit(jax.grad(lambda p: jnp.mean((model.apply(p, x) - x) ** 2)))(params)
  # The encoder only gets a gradient through the straight-through bottleneck.
  enc = grads["params"]["encoder_convs_0"]["kernel"]
  assert float(jnp.max(jnp.abs(enc))) > 0.0
  chex.assert_tree_all_finite(grads)


def test_unit_range_helpers():
  y = jnp.array([-1.0, 0.0, 1.0])
  np.testing.assert_allclose(autoencoder.to_unit_range(y), [0.0, 0.5, 1.0])
  np.testing.assert_allclose(autoencoder.from_unit_range(autoencoder.to_unit_range(y)), y)


def test_errors():
  model = ARCHS["tiny_conv"]()
  x = jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  with pytest.raises(ValueError, match="image_shape"):
    jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
  with pytest.raises(ValueError, match="code must be one of"):
    jax.eval_shape(autoencoder.ConvAutoencoder(code="sigmoid").init, jax.random.key(0), x)
  with pytest.raises(ValueError, match="valid names"):
    autoencoder.get_arch("conv1024")
  assert autoencoder.get_arch("conv256") is ARCHS["conv256"]
