"""BEGAN: an autoencoder discriminator balanced against a generator, with any image distance.

The discriminator D is an autoencoder and its energy is the reconstruction loss
`L(v) = d(v, D(v))`. Berthelot et al. use the l1 distance; Vertolli & Davies replace it with a
weighted sum of l1, 1 - GMSM and 1 - chrominance. Every function here takes the distance `d`
`(x, y) -> [B]` as an argument and is otherwise the paper's formula.

The losses and the `k_t` update take batch means of `L` (scalars); they act elementwise, so per
image values `[B]` work too. A trainer takes `L_D` gradients w.r.t. the discriminator only (with
`G(z)` held fixed) and `L_G` gradients w.r.t. the generator only, then updates `k_t` from the same
step's `L(x)` and `L(G(z))` (`k_t` is a constant, never differentiated).

Images are float `[B, S, S, C]`, S = 8 * 2^k. The networks end in a linear 3x3 convolution, as in
BEGAN: outputs are not squashed into `[0, 1]`.

References:
  D. Berthelot, T. Schumm, L. Metz. BEGAN: Boundary equilibrium generative adversarial
  networks. arXiv:1703.10717, 2017.
  M. O. Vertolli, J. Davies. Image quality assessment techniques show improved training and
  evaluation of autoencoder generative adversarial networks. arXiv:1708.02237, 2017.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers

LAMBDA_K = 0.001  # Berthelot et al. sec. 3.4; also Vertolli's models/cqs_cg/config.py.
GAMMA = 0.5  # Berthelot et al.'s default diversity ratio; Vertolli trains gamma 0.5 and 0.7.
_BASE = 8  # Spatial size of the innermost stage: both networks start / end at 8x8.

# Loss weights (beta) for l1, 1 - GMSM and 1 - chrominance in Vertolli & Davies' code; the
# weighted sum is divided by the sum of the weights. Source: github.com/MichaelOVertolli/
# Tensorflow-ConnectorGraph, models/cqs_loss_set/config.py and graph.py (2017). Their code also
# offers gamma in {0.5, 0.7}, image size in {64, 128}, Nz = Nh = 128 (64 px) or 256 (128 px), n =
# 128 filters, batch size 16, lambda_k = 0.001, Adam lr 8e-5 (D) and 2e-5 (G).
VERTOLLI_LOSS_WEIGHTS = {
  "began": {"l1": 1.0, "gmsm": 0.0, "chroma": 0.0},
  "began_gmsm": {"l1": 1.0, "gmsm": 1.0, "chroma": 0.0},
  "began_gmsm_chrom": {"l1": 1.0, "gmsm": 1.0, "chroma": 1.0},
  "scaled_began_gmsm": {"l1": 2.0, "gmsm": 1.0, "chroma": 0.0},
  "scaled_began_gmsm_chrom": {"l1": 2.0, "gmsm": 1.0, "chroma": 1.0},
  "scaled_began_gmsm_halfchrom": {"l1": 2.0, "gmsm": 1.0, "chroma": 0.5},
}

# Table 1 of Vertolli & Davies (12 models: beta per distance, gamma, image size, Nz = Nh) could
# not be retrieved (only the paper's first page and the authors' code were reachable), so it is
# left empty rather than guessed. Fill it from arXiv:1708.02237 Table 1 as
# {"1": {"l1": ..., "gmsm": ..., "chroma": ..., "gamma": ..., "image_size": ..., "hidden_size":
# ...}, ...}; model 1 is the original BEGAN (l1 only) per the paper's Figure 1 caption.
VERTOLLI_CONFIGS: dict[str, dict[str, float]] = {}


def num_stages(image_size: int) -> int:
  """Convolution stages of a BEGAN network for `image_size` pixels (4 for 64, 5 for 128)."""
  stages = image_size // _BASE
  if image_size < _BASE or image_size % _BASE or stages & (stages - 1):
    raise ValueError(
      f"BEGAN networks halve the image down to 8x8, so image_size must be 8 * 2^k (8, 16, 32, "
      f"64, 128, ...), got {image_size}. Resize or crop the images to 64 or 128 pixels."
    )
  return stages.bit_length()


def _conv(features: int, *, strides: int = 1) -> nn.Conv:
  return nn.Conv(features, (3, 3), strides=(strides, strides), padding="SAME")


class Decoder(nn.Module):
  """FC from the code to `8 x 8 x n`, then per stage two 3x3 conv + ELU and a 2x nearest-neighbour
  upsampling (none after the last stage), then a linear 3x3 conv to `channels`.

  Used as the generator (input z) and as the discriminator's decoder (input h).
  """

  image_size: int
  channels: int = 3
  num_filters: int = 128
  output_mean: tuple[float, ...] | None = None  # start of the last bias (`layers.output_bias`)

  @nn.compact
  def __call__(self, code: jax.Array) -> jax.Array:
    """`[B, Nz or Nh]` -> images `[B, S, S, channels]`."""
    stages = num_stages(self.image_size)
    x = nn.Dense(_BASE * _BASE * self.num_filters)(code)
    x = x.reshape(code.shape[0], _BASE, _BASE, self.num_filters)
    for stage in range(stages):
      x = nn.elu(_conv(self.num_filters)(x))
      x = nn.elu(_conv(self.num_filters)(x))
      if stage < stages - 1:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour 2x
    bias_init = layers.output_bias(self.output_mean, self.channels)
    return nn.Conv(self.channels, (3, 3), padding="SAME", bias_init=bias_init)(x)


class Encoder(nn.Module):
  """3x3 conv + ELU to n filters, then per stage s = 1..S two 3x3 conv + ELU with s * n filters
  and a stride-2 3x3 conv + ELU (none after the last stage), then FC from `8 x 8 x S n` to h."""

  image_size: int
  num_filters: int = 128
  hidden_size: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Images `[B, S, S, C]` -> `h [B, hidden_size]`."""
    stages = num_stages(self.image_size)
    if x.ndim != 4 or x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(
        f"the encoder was built for [B, {self.image_size}, {self.image_size}, C] images, got "
        f"shape {x.shape}. Set image_size to the data's size (NHWC layout)."
      )
    x = nn.elu(_conv(self.num_filters)(x))
    for stage in range(stages):
      features = self.num_filters * (stage + 1)
      x = nn.elu(_conv(features)(x))
      x = nn.elu(_conv(features)(x))
      if stage < stages - 1:
        x = nn.elu(_conv(features, strides=2)(x))
    return nn.Dense(self.hidden_size)(x.reshape(x.shape[0], -1))


class Generator(nn.Module):
  """BEGAN generator G: z `[B, Nz]` in `[-1, 1]` -> images `[B, S, S, channels]`."""

  image_size: int = 64
  channels: int = 3
  num_filters: int = 128
  output_mean: tuple[float, ...] | None = None  # the training images' mean (see Decoder)

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    decoder = Decoder(
      self.image_size, self.channels, self.num_filters, self.output_mean, name="decoder"
    )
    return decoder(z)


class Discriminator(nn.Module):
  """BEGAN discriminator D: an autoencoder, images -> reconstructions of the same shape."""

  image_size: int = 64
  channels: int = 3
  num_filters: int = 128
  hidden_size: int = 128
  output_mean: tuple[float, ...] | None = None  # the training images' mean (see Decoder)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = Encoder(self.image_size, self.num_filters, self.hidden_size, name="encoder")(x)
    decoder = Decoder(
      self.image_size, self.channels, self.num_filters, self.output_mean, name="decoder"
    )
    return decoder(h)


def sample_latent(key: jax.Array, batch_size: int, latent_size: int) -> jax.Array:
  """z ~ U(-1, 1)^Nz, `[batch_size, latent_size]`."""
  return jax.random.uniform(key, (batch_size, latent_size), minval=-1.0, maxval=1.0)


def autoencoder_loss(
  v: jax.Array, reconstruction: jax.Array, *, distance: Callable[[jax.Array, jax.Array], jax.Array]
) -> jax.Array:
  """`L(v) = d(v, D(v))` per image, `[B]`, with `reconstruction = D(v)` and `v` the reference."""
  return distance(v, reconstruction)


def discriminator_loss(loss_real: jax.Array, loss_fake: jax.Array, k: jax.Array) -> jax.Array:
  """`L_D = L(x) - k_t L(G(z))`."""
  return loss_real - jax.lax.stop_gradient(k) * loss_fake


def generator_loss(loss_fake: jax.Array) -> jax.Array:
  """`L_G = L(G(z))`."""
  return loss_fake


def update_k(
  k: jax.Array,
  loss_real: jax.Array,
  loss_fake: jax.Array,
  *,
  gamma: float = GAMMA,
  lambda_k: float = LAMBDA_K,
) -> jax.Array:
  """`k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1)` (no gradient flows)."""
  balance = gamma * loss_real - loss_fake
  return jax.lax.stop_gradient(jnp.clip(k + lambda_k * balance, 0.0, 1.0))


def convergence_measure(
  loss_real: jax.Array, loss_fake: jax.Array, *, gamma: float = GAMMA
) -> jax.Array:
  """`M_global = L(x) + |gamma L(x) - L(G(z))|` (Berthelot et al. sec. 3.4.1)."""
  return loss_real + jnp.abs(gamma * loss_real - loss_fake)
