"""The VAEs of Czolbe et al. (2020) used to compare reconstruction losses.

References:
  Czolbe, Krause, Cox, Igel, "A Loss Function for Generative Neural Networks Based on Watson's
  Perceptual Model", NeurIPS 2020 (architectures read from their public code, see
  ../shared/reference/WATSON.md). All convolutions 3x3 with padding 1, LeakyReLU slope 0.01.

Images are NHWC in [0, 1]; the decoder ends in a sigmoid.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
  """Bilinear weights with align_corners=True (PyTorch's Upsample option used by the authors)."""
  positions = np.linspace(0.0, size_in - 1, size_out)
  lower = np.clip(np.floor(positions).astype(int), 0, size_in - 2)
  frac = positions - lower
  matrix = np.zeros((size_out, size_in), np.float32)
  matrix[np.arange(size_out), lower] = 1.0 - frac
  matrix[np.arange(size_out), lower + 1] += frac
  return matrix


def upsample_bilinear(x: jax.Array, size: int) -> jax.Array:
  """Bilinear resize of `[B, H, W, C]` to `size x size` with aligned corners."""
  rows = jnp.asarray(_interpolation_matrix(x.shape[1], size), x.dtype)
  cols = jnp.asarray(_interpolation_matrix(x.shape[2], size), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


def max_pool(x: jax.Array, factor: int = 2) -> jax.Array:
  """Non-overlapping `factor x factor` max pooling of `[B, H, W, C]` (odd edges dropped).

  The values of `nn.max_pool(x, (factor, factor), (factor, factor))`, as a reshape and a max.
  On CPU, XLA differentiates the reduce-window pooling through argmax index planes (4 int32
  iotas the size of the input, recomputed every step: 70 ms of an 830 ms MNIST training step);
  the gradient of a max is a compare and a select. They differ only where a window holds exact
  ties: this splits the gradient equally among them, reduce-window gives it to one.
  """
  b, h, w, c = x.shape
  h, w = h // factor, w // factor
  x = x[:, : h * factor, : w * factor].reshape(b, h, factor, w, factor, c)
  return jnp.max(x, axis=(2, 4))


def _conv(features: int) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding=1)


class Encoder(nn.Module):
  """Convolutions (with max-pools after the listed stages), then a dense layer to mu, logvar."""

  features: Sequence[int]
  pool_after: Sequence[bool]
  batch_norm: bool
  hidden: int
  latent: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    for features, pool in zip(self.features, self.pool_after, strict=True):
      x = nn.leaky_relu(_conv(features)(x), 0.01)
      if pool:
        x = max_pool(x)
        if self.batch_norm:
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.latent)(x), nn.Dense(self.latent)(x)


class Decoder(nn.Module):
  """Dense layers to a 16x16 map, then convolutions with bilinear x2 upsampling, sigmoid."""

  hidden: int
  start_features: int
  features: Sequence[int]  # one conv per entry after the first, upsampling where marked
  upsample_before: Sequence[bool]
  channels: int

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = nn.relu(nn.Dense(self.hidden)(z))
    x = nn.relu(nn.Dense(self.start_features * 16 * 16)(x))
    x = x.reshape(z.shape[0], 16, 16, self.start_features)
    for features, upsample in zip(self.features, self.upsample_before, strict=True):
      if upsample:
        x = upsample_bilinear(x, 2 * x.shape[1])
      x = nn.leaky_relu(_conv(features)(x), 0.01)
    return nn.sigmoid(_conv(self.channels)(x))


class VAE(nn.Module):
  """Gaussian-latent VAE: `apply(params, x, key)` -> (reconstruction, mu, logvar)."""

  encoder: Encoder
  decoder: Decoder

  def __call__(self, x: jax.Array, key: jax.Array, *, train: bool = False):
    mu, logvar = self.encoder(x, train=train)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
    return self.decoder(z), mu, logvar

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x, train=False)

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)


def mnist_vae(latent: int = 2, channels: int = 1) -> VAE:
  """Grey 32x32, latent 2: Conv32-pool-Conv64-Dense1024 / Dense1024-Dense(64*16*16)-...-Conv1."""
  return VAE(
    Encoder((32, 64), (True, False), batch_norm=False, hidden=1024, latent=latent),
    Decoder(1024, 64, (64, 32, 32), (False, True, False), channels=channels),
  )


def celeba_vae(latent: int = 256, channels: int = 3) -> VAE:
  """RGB 64x64, latent 256: three convs with pool + BatchNorm after the first two, Dense2048."""
  return VAE(
    Encoder((64, 128, 128), (True, True, False), batch_norm=True, hidden=2048, latent=latent),
    Decoder(2048, 128, (128, 64, 64, 64), (False, True, True, False), channels=channels),
  )


def tiny_vae(latent: int = 2, channels: int = 1) -> VAE:
  """A small VAE of the same layout for tests (16x16 start map, 32x32 output)."""
  return VAE(
    Encoder((4, 8), (True, False), batch_norm=True, hidden=16, latent=latent),
    Decoder(16, 4, (4, 4), (False, True), channels=channels),
  )


ARCHS = {
  "mnist": functools.partial(mnist_vae),
  "celeba": functools.partial(celeba_vae),
  "tiny": functools.partial(tiny_vae),
}


def kl_divergence(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, exp(logvar)) || N(0, I)) per example, `[B]`."""
  return -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)
