"""Autoencoders with binary or continuous codes for grey images.

All models take NHWC float images of the shape fixed by `image_shape` and reconstruct them through
a tanh output, so inputs and reconstructions live in `[-1, 1]`; `to_unit_range` maps both to the
`[0, 1]` range that the metrics in `perceptual/` expect. Each model has `encode` (images to codes
`[B, code_dim]`), `decode` (codes to images) and `__call__` (both), all Flax Linen methods:

    model = ARCHS["conv256"]()
    params = model.init(key, x)                       # x: [B, 32, 32, 1] in [-1, 1]
    y = model.apply(params, x)                        # [B, 32, 32, 1] in [-1, 1]
    codes = model.apply(params, x, method="encode")   # [B, 256], entries exactly +-1

References:
  Ridgeway, Snell, Roads, Zemel, Mozer. Learning to generate images with perceptual similarity
  metrics. arXiv:1511.06409v1 (2015), Table 1.
  Snell, Ridgeway, Liao, Roads, Mozer, Zemel. Learning to generate images with perceptual
  similarity metrics. ICIP 2017.
  Krizhevsky, Hinton. Using very deep autoencoders for content-based image retrieval. ESANN 2011.
"""

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceptual import checks

CODE_KINDS = ("binary", "tanh", "linear")


def to_unit_range(y: jax.Array) -> jax.Array:
  """Maps tanh outputs `[-1, 1]` to `[0, 1]`, `(y + 1) / 2`, for the metrics in `perceptual/`."""
  return (y + 1.0) / 2.0


def from_unit_range(x: jax.Array) -> jax.Array:
  """Maps `[0, 1]` images to the `[-1, 1]` range of the tanh models, `2 x - 1`."""
  return 2.0 * x - 1.0


def binary_tanh(x: jax.Array, *, quantize: bool = True) -> jax.Array:
  """`sign(tanh(x))` in the forward pass, the derivative of `tanh` in the backward pass.

  The straight-through estimator: `h + stop_gradient(sign(h) - h)` with `h = tanh(x)` equals
  `sign(h)` and has the gradient of `h`. sign(0) is +1 (so is sign(-0.0)), so every code entry is
  exactly -1 or +1. The sum is exact in float32: |h| <= 1, and round-to-nearest of
  `h + round(b - h)` returns `b` for `b = +-1`.

  Args:
    x: pre-activations, any shape.
    quantize: False returns `tanh(x)` (a continuous code), e.g. to compare quantised and
      unquantised training.

  Returns:
    Codes of the shape of `x`: exactly +-1 if `quantize`, else in `(-1, 1)`.
  """
  h = jnp.tanh(x)
  if not quantize:
    return h
  b = jnp.where(h >= 0, 1.0, -1.0).astype(h.dtype)
  return h + jax.lax.stop_gradient(b - h)


def _code(x: jax.Array, kind: str, quantize: bool) -> jax.Array:
  if kind == "binary":
    return binary_tanh(x, quantize=quantize)
  return jnp.tanh(x) if kind == "tanh" else x


def _check_input(x: jax.Array, image_shape: tuple[int, int, int], model: str) -> jax.Array:
  x = checks.as_float_images(x, name="x")
  if tuple(x.shape[1:]) != tuple(image_shape):
    raise ValueError(
      f"{model} was built for images of shape [B, {', '.join(map(str, image_shape))}], got "
      f"{x.shape}. Resize the data or build the model with image_shape={tuple(x.shape[1:])}."
    )
  return x


def _check_code_kind(code: str) -> None:
  if code not in CODE_KINDS:
    raise ValueError(f"code must be one of {CODE_KINDS}, got {code!r}.")


class DenseAutoencoder(nn.Module):
  """Fully connected autoencoder (Krizhevsky & Hinton's layout; Ridgeway et al. Table 1, left).

  Encoder: flatten, `Dense(h)` + ReLU for each `h` in `hidden`, `Dense(code_dim)` + code
  activation. Decoder: the mirror image, `Dense(h)` + ReLU for `h` in reversed `hidden`, then
  `Dense(H * W * C)` + tanh, reshaped to `image_shape`.

  Attributes:
    hidden: widths of the hidden layers of the encoder (the decoder uses them reversed).
    code_dim: number of code units.
    image_shape: `(H, W, C)` of the images.
    code: "binary" (`binary_tanh`), "tanh" or "linear".
  """

  hidden: Sequence[int] = (8192, 4096, 2048, 1024, 512)
  code_dim: int = 256
  image_shape: tuple[int, int, int] = (32, 32, 1)
  code: str = "binary"

  def setup(self):
    _check_code_kind(self.code)
    self.encoder_layers = [nn.Dense(h) for h in self.hidden]
    self.code_layer = nn.Dense(self.code_dim)
    self.decoder_layers = [nn.Dense(h) for h in reversed(self.hidden)]
    self.output_layer = nn.Dense(math.prod(self.image_shape))

  def encode(self, x: jax.Array, *, quantize: bool = True) -> jax.Array:
    """Images `[B, H, W, C]` to codes `[B, code_dim]`."""
    x = _check_input(x, self.image_shape, "DenseAutoencoder")
    h = x.reshape(x.shape[0], -1)
    for layer in self.encoder_layers:
      h = nn.relu(layer(h))
    return _code(self.code_layer(h), self.code, quantize)

  def decode(self, z: jax.Array) -> jax.Array:
    """Codes `[B, code_dim]` to images `[B, H, W, C]` in `[-1, 1]`."""
    h = z
    for layer in self.decoder_layers:
      h = nn.relu(layer(h))
    return jnp.tanh(self.output_layer(h)).reshape((z.shape[0], *self.image_shape))

  def __call__(self, x: jax.Array, *, quantize: bool = True) -> jax.Array:
    """Reconstructs `x` `[B, H, W, C]`; returns `[B, H, W, C]` in `[-1, 1]`."""
    return self.decode(self.encode(x, quantize=quantize))


def conv_output_size(size: int, *, kernel_size: int, stride: int, padding: str) -> int:
  """Spatial size after a strided convolution with "VALID" or "SAME" padding."""
  if padding == "VALID":
    return (size - kernel_size) // stride + 1
  if padding == "SAME":
    return -(-size // stride)
  raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}.")


def upsample_padding(size_in: int, size_out: int, *, kernel_size: int, factor: int):
  """Zero padding `(lo, hi)` making `conv(repeat(x, factor))` exactly `size_out` pixels long.

  A "VALID" convolution of the `factor * size_in` upsampled map with a `kernel_size` kernel gives
  `factor * size_in - kernel_size + 1` pixels, so the total padding is
  `size_out - factor * size_in + kernel_size - 1`, split with the odd pixel at the end (the
  convention of "SAME" padding).
  """
  total = size_out - factor * size_in + kernel_size - 1
  if total < 0:
    raise ValueError(
      f"cannot reach {size_out} pixels from {size_in} x{factor} with a {kernel_size}-tap kernel "
      "by padding; use a larger kernel_size or 'SAME' encoder padding."
    )
  return total // 2, total - total // 2


class ConvAutoencoder(nn.Module):
  """Convolutional autoencoder whose decoder mirrors the encoder's feature-map sizes exactly.

  Encoder: for each `f` in `features`, `Conv(f, kernel_size, stride)` + `activation`; flatten;
  `Dense(code_dim)` + code activation. Decoder: `Dense(h * w * features[-1])` + `activation`,
  reshaped to the last encoder map; then one "deconvolution" per encoder layer, implemented as
  `stride`-fold repeat upsampling followed by a `kernel_size` convolution whose zero padding
  (`upsample_padding`) makes the output exactly the size of the matching encoder input. The
  channels step down through reversed `features` to `C`; the last layer is tanh.

  Ridgeway et al.'s Conv-256/512 (32x32x1, 4x4 stride-2 "VALID" convs of 32 and 64 tanh units):
  encoder 32 -> 15 -> 6 (6x6x64); decoder 6 -x2-> 12 -pad (3, 3)-> 15x15x32 -x2-> 30 -pad (2, 3)->
  32x32x1. Repeat upsampling replaces the transposed convolutions of the paper, which avoids their
  checkerboard artefacts (a strided 4x4 transposed conv would give 6 -> 14 -> 30, not 32).

  Attributes:
    features: channels of the encoder convolutions (the decoder uses them reversed).
    code_dim: number of code units.
    image_shape: `(H, W, C)` of the images.
    kernel_size: square kernel size of every convolution.
    stride: stride of the encoder convolutions and factor of the decoder's upsampling.
    padding: "VALID" or "SAME" for the encoder convolutions.
    activation: hidden nonlinearity (Ridgeway et al. use tanh).
    code: "binary" (`binary_tanh`), "tanh" or "linear".
  """

  features: Sequence[int] = (32, 64)
  code_dim: int = 256
  image_shape: tuple[int, int, int] = (32, 32, 1)
  kernel_size: int = 4
  stride: int = 2
  padding: str = "VALID"
  activation: Callable[[jax.Array], jax.Array] = nn.tanh
  code: str = "binary"

  def _sizes(self) -> list[tuple[int, int]]:
    """`(H, W)` of the input of every encoder layer, then of the last encoder map."""
    sizes = [tuple(self.image_shape[:2])]
    for _ in self.features:
      sizes.append(
        tuple(
          conv_output_size(
            s, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding
          )
          for s in sizes[-1]
        )
      )
    if min(sizes[-1]) < 1:
      raise ValueError(
        f"{len(self.features)} stride-{self.stride} convolutions shrink {self.image_shape[:2]} "
        f"to nothing ({sizes}); use fewer features or 'SAME' padding."
      )
    return sizes

  def setup(self):
    _check_code_kind(self.code)
    sizes = self._sizes()
    k = (self.kernel_size, self.kernel_size)
    self.encoder_convs = [
      nn.Conv(f, k, strides=self.stride, padding=self.padding) for f in self.features
    ]
    self.code_layer = nn.Dense(self.code_dim)
    self.bridge = nn.Dense(math.prod(sizes[-1]) * self.features[-1])
    out_channels = [self.image_shape[-1], *self.features[:-1]]
    decoder_convs = []
    for i in reversed(range(len(self.features))):
      pads = [
        upsample_padding(s_in, s_out, kernel_size=self.kernel_size, factor=self.stride)
        for s_in, s_out in zip(sizes[i + 1], sizes[i], strict=True)
      ]
      decoder_convs.append(nn.Conv(out_channels[i], k, padding=pads))
    self.decoder_convs = decoder_convs

  def encode(self, x: jax.Array, *, quantize: bool = True) -> jax.Array:
    """Images `[B, H, W, C]` to codes `[B, code_dim]`."""
    h = _check_input(x, self.image_shape, "ConvAutoencoder")
    for conv in self.encoder_convs:
      h = self.activation(conv(h))
    return _code(self.code_layer(h.reshape(h.shape[0], -1)), self.code, quantize)

  def decode(self, z: jax.Array) -> jax.Array:
    """Codes `[B, code_dim]` to images `[B, H, W, C]` in `[-1, 1]`."""
    height, width = self._sizes()[-1]
    h = self.activation(self.bridge(z)).reshape(z.shape[0], height, width, self.features[-1])
    for i, conv in enumerate(self.decoder_convs):
      h = jnp.repeat(jnp.repeat(h, self.stride, axis=1), self.stride, axis=2)
      h = conv(h)
      h = jnp.tanh(h) if i == len(self.decoder_convs) - 1 else self.activation(h)
    return h

  def __call__(self, x: jax.Array, *, quantize: bool = True) -> jax.Array:
    """Reconstructs `x` `[B, H, W, C]`; returns `[B, H, W, C]` in `[-1, 1]`."""
    return self.decode(self.encode(x, quantize=quantize))


# Snell et al.'s convolutional autoencoders with a 128-unit code. The layer details of the paper
# could not be retrieved here, so this is our choice, kept close to Ridgeway et al.'s Conv-256:
# 4x4 stride-2 "SAME" ReLU convolutions halving the map down to 6x6 (96 -> 48 -> 24 -> 12 -> 6 for
# STL-10, 48 -> 24 -> 12 -> 6 for Yale B), a linear (continuous) 128-unit code for the linear
# probes, and the mirrored repeat-upsampling decoder with a tanh output.
_snell = functools.partial(
  ConvAutoencoder, code_dim=128, padding="SAME", activation=nn.relu, code="linear"
)

ARCHS = {
  "fc256": DenseAutoencoder,
  "conv256": ConvAutoencoder,
  "conv512": functools.partial(ConvAutoencoder, code_dim=512),
  "snell128": functools.partial(_snell, features=(32, 64, 128, 256), image_shape=(96, 96, 1)),
  "snell128_yale": functools.partial(_snell, features=(32, 64, 128), image_shape=(48, 48, 1)),
  # Tiny variants for tests: same code paths, a few thousand parameters.
  "tiny_fc": functools.partial(
    DenseAutoencoder, hidden=(32, 16), code_dim=8, image_shape=(8, 8, 1)
  ),
  "tiny_conv": functools.partial(
    ConvAutoencoder, features=(4, 8), code_dim=8, image_shape=(16, 16, 1)
  ),
  "tiny_snell": functools.partial(_snell, features=(4, 8), code_dim=8, image_shape=(12, 12, 1)),
}


def get_arch(name: str) -> Callable[..., nn.Module]:
  """Returns the model constructor `ARCHS[name]`; raises a `ValueError` listing valid names."""
  if name not in ARCHS:
    raise ValueError(f"unknown autoencoder arch {name!r}; valid names: {sorted(ARCHS)}.")
  return ARCHS[name]
