"""DeePSiM networks: an up-convolutional generator, a GAN discriminator and a VAE encoder.

Dosovitskiy and Brox train a generator G with `lambda_feat ||C(G(x)) - C(y)||^2 + lambda_adv
L_adv + lambda_img ||G(x) - y||^2`, C a fixed "comparator" network and L_adv the loss of a
discriminator D trained alongside. The networks here follow the paper's design at small sizes
(64x64 RGB trains on a CPU):

- `Generator`: code `[B, D]` -> fully connected layers -> `4 x 4` map -> per stage an
  up-convolution (x2 nearest-neighbour upsampling + 3x3 conv) and a 3x3 conv, leaky ReLU (0.3)
  after each, then a linear 3x3 conv to the image. This is the paper's generator for fully
  connected inputs (fc6-fc8); conv features of a small image (conv5 of 64x64 is 3x3x256) are
  flattened into it, which makes every inversion input "fc-like".
- `Discriminator`: five convolutions (strides 2, 1, 2, 1, 2), global average pooling, two fully
  connected layers with dropout 0.5, two logits (fake, real). In the inversion task it also sees
  the features being inverted (`condition`), as in the paper, through a fully connected layer
  concatenated after pooling.
- `Encoder`: the DeePSiM-VAE's encoder, strided convolutions and two heads, `mu` and
  `log sigma` of a diagonal Gaussian.

Outputs are linear (not squashed into [0, 1]), as in the paper; clip them for display.

References:
  A. Dosovitskiy and T. Brox, "Generating Images with Perceptual Similarity Metrics based on Deep
  Networks", NeurIPS 2016 (https://arxiv.org/abs/1602.02644).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers
from perceptual import deep

# AlexNet layers whose features can be inverted; pool5 = conv5 max-pooled (3x3, stride 2), a
# 1x1x256 "fc-like" vector at 64x64.
INPUT_LAYERS = (*deep.ALEX_LAYERS, "pool5")


def input_features(params: dict, x: jax.Array, *, layer: str) -> jax.Array:
  """Features of the fixed AlexNet that the inversion generator reads (no gradient).

  Args:
    params: AlexNet weights `{conv: {"kernel", "bias"}}`.
    x: images `[B, H, W, C]` in [0, 1].
    layer: one of `INPUT_LAYERS`.

  Returns:
    `[B, h, w, c]` features.
  """
  if layer not in INPUT_LAYERS:
    raise ValueError(f"input layer must be one of {INPUT_LAYERS}, got {layer!r}.")
  conv = "conv5" if layer == "pool5" else layer
  f = deep.alexnet_features(params, x, layers=(conv,))[conv]
  if layer == "pool5":
    f = jax.lax.reduce_window(f, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
  return jax.lax.stop_gradient(f)


def input_shape(layer: str, image_size: int, channels: int = 3) -> tuple[int, ...]:
  """Shape `(h, w, c)` of `input_features` for one `image_size` image (no computation)."""
  params = jax.eval_shape(deep.alexnet_random_params, jax.random.key(0))
  x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  shape = jax.eval_shape(lambda p, v: input_features(p, v, layer=layer), params, x).shape[1:]
  if 0 in shape:
    raise ValueError(
      f"{layer} of a {image_size}x{image_size} image is empty {shape}; use images of at least "
      "63 pixels for pool5, or a shallower --input_layer."
    )
  return shape


LEAK = 0.3  # the paper's leaky ReLU slope
BASE = 4  # side of the generator's first feature map


def _leaky(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=LEAK)


def num_stages(image_size: int) -> int:
  """Up-convolution stages from the `4 x 4` map to `image_size` (4 for 64 pixels)."""
  stages = image_size // BASE
  if image_size < 2 * BASE or image_size % BASE or stages & (stages - 1):
    raise ValueError(
      f"the DeePSiM generator doubles a 4x4 map, so image_size must be 4 * 2^k >= 8 (16, 32, "
      f"64, ...), got {image_size}. Crop or resize the data to such a size."
    )
  return stages.bit_length() - 1


class UpConv(nn.Module):
  """x2 nearest-neighbour upsampling followed by a 3x3 convolution (an "up-convolution")."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
    return nn.Conv(self.features, (3, 3), padding="SAME")(x)


class Generator(nn.Module):
  """Code `[B, D]` -> image `[B, image_size, image_size, channels]` (linear output).

  Attributes:
    image_size: output side, 4 * 2^k.
    channels: output channels.
    width: filters of the last stage; each earlier stage doubles them (capped at 8 * width).
    hidden: units of the two fully connected layers.
    output_mean: per-channel start of the output layer's bias, the training images' mean
      (`models.layers.output_bias`); None: zeros.
  """

  image_size: int = 64
  channels: int = 3
  width: int = 32
  hidden: int = 512
  output_mean: tuple[float, ...] | None = None

  @nn.compact
  def __call__(self, code: jax.Array) -> jax.Array:
    stages = num_stages(self.image_size)
    filters = [self.width * min(2 ** (stages - 1 - i), 8) for i in range(stages)]
    h = code.reshape(code.shape[0], -1)
    h = _leaky(nn.Dense(self.hidden)(h))
    h = _leaky(nn.Dense(self.hidden)(h))
    h = _leaky(nn.Dense(BASE * BASE * filters[0])(h)).reshape(-1, BASE, BASE, filters[0])
    for features in filters:
      h = _leaky(UpConv(features)(h))
      h = _leaky(nn.Conv(features, (3, 3), padding="SAME")(h))
    bias_init = layers.output_bias(self.output_mean, self.channels)
    return nn.Conv(self.channels, (3, 3), padding="SAME", bias_init=bias_init)(h)


class Discriminator(nn.Module):
  """Image `[B, S, S, C]` (and optional condition `[B, ...]`) -> logits `[B, 2]` (fake, real).

  Attributes:
    width: filters of the first convolution (then x2, x4, x8, x8).
    hidden: units of the first fully connected layer.
  """

  width: int = 32
  hidden: int = 256

  @nn.compact
  def __call__(
    self, x: jax.Array, condition: jax.Array | None = None, *, train: bool = False
  ) -> jax.Array:
    spec = ((5, 1, 2), (3, 2, 1), (3, 4, 2), (3, 8, 1), (3, 8, 2))  # (kernel, width x, stride)
    h = x
    for kernel, mult, stride in spec:
      conv = nn.Conv(self.width * mult, (kernel, kernel), strides=(stride, stride), padding="SAME")
      h = _leaky(conv(h))
    h = jnp.mean(h, axis=(1, 2))
    if condition is not None:
      c = _leaky(nn.Dense(self.hidden)(condition.reshape(condition.shape[0], -1)))
      h = jnp.concatenate([h, c], axis=-1)
    h = nn.Dropout(0.5, deterministic=not train)(h)
    h = _leaky(nn.Dense(self.hidden)(h))
    h = nn.Dropout(0.5, deterministic=not train)(h)
    return nn.Dense(2)(h)


class Encoder(nn.Module):
  """Image `[B, S, S, C]` -> (`mu`, `log_sigma`), each `[B, latent]` (the DeePSiM-VAE encoder).

  Attributes:
    latent: latent dimensions.
    width: filters of the first strided convolution (doubled per stage, capped at 8 * width).
  """

  latent: int = 128
  width: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = x
    for i in range(4):
      h = _leaky(nn.Conv(self.width * min(2**i, 8), (4, 4), strides=(2, 2), padding="SAME")(h))
    h = _leaky(nn.Dense(512)(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.latent)(h), nn.Dense(self.latent)(h)


def sample(key: jax.Array, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """Reparameterised draw `mu + sigma * eps`, eps ~ N(0, I); same shape as `mu`."""
  return mu + jnp.exp(log_sigma) * jax.random.normal(key, mu.shape, mu.dtype)


def kl_divergence(mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """`KL(N(mu, sigma^2) || N(0, I))` per example, `[B]`, summed over latent dimensions."""
  return 0.5 * jnp.sum(
    jnp.square(mu) + jnp.exp(2 * log_sigma) - 1.0 - 2 * log_sigma, axis=tuple(range(1, mu.ndim))
  )


def discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """`L_discr = -log D(y) - log(1 - D(G(x)))` per example, `[B]` (class 1 = real)."""
  return -jax.nn.log_softmax(logits_real)[:, 1] - jax.nn.log_softmax(logits_fake)[:, 0]


def adversarial_loss(logits_fake: jax.Array) -> jax.Array:
  """The generator's `L_adv = -log D(G(x))` per example, `[B]` (non-saturating form)."""
  return -jax.nn.log_softmax(logits_fake)[:, 1]


def discriminator_updates(
  l_discr: jax.Array, l_adv: jax.Array, *, ratio: float | jax.Array = 0.1
) -> jax.Array:
  """DeePSiM's rule: update D only while `L_discr / L_adv >= ratio` (a boolean scalar).

  A discriminator far ahead of the generator (small L_discr, large L_adv) gives the generator
  vanishing gradients; pausing D lets G catch up. Written as `L_discr >= ratio * L_adv` so that
  `L_adv = 0` updates D instead of dividing by zero.
  """
  return l_discr >= ratio * l_adv
