"""EL-DRAW: DRAW with Gaussian read/write attention, trained on any image distance.

DRAW (Gregor et al. 2015) builds an image on a canvas over T steps: each step reads a glimpse of
the image through a grid of Gaussian filters, updates an encoder LSTM, samples a latent z_t from
Q(z_t | h_enc), updates a decoder LSTM and writes a patch onto the canvas. Expected-Loss DRAW
(Ridgeway et al. 2015) keeps the model and replaces the Bernoulli likelihood by `C * Delta(x, y)`
for a perceptual distance `Delta`; `draw_loss` takes any distance `(x, y) -> [B]`.

Images are float `[B, H, W, C]` in `[0, 1]`; the model outputs `sigmoid(canvas)`.

References:
  K. Gregor, I. Danihelka, A. Graves, D. J. Rezende, D. Wierstra. DRAW: A recurrent neural
  network for image generation. ICML 2015. https://arxiv.org/abs/1502.04623
  K. Ridgeway, J. Snell, B. D. Roads, R. S. Zemel, M. C. Mozer. Learning to generate images with
  perceptual similarity metrics. arXiv:1511.06409v1, 2015.
"""

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# Distance weights C of the objective `KL + C * Delta` (Ridgeway et al. 2015; 1 for BCE = DRAW).
# BCE is summed over pixels; Ridgeway's abstract calls its pixel loss the squared error "SE", so
# C = 10 most likely goes with the per-image sum of squared errors (H * W * C * mean squared error)
# and C = 500 with 1 - SSIM (a per-image mean). Not checked against their code.
DISTANCE_WEIGHTS = {"bce": 1.0, "mse": 10.0, "ssim": 500.0}
# Ridgeway et al. clip the gradient of every weight matrix and bias to this norm.
GRADIENT_CLIP_NORM = 10.0
_HIGHEST = jax.lax.Precision.HIGHEST


def filterbank(
  center: jax.Array, delta: jax.Array, sigma2: jax.Array, *, size: int, length: int
) -> jax.Array:
  """Gaussian filterbank `F[b, i, a]` along one image axis (Gregor et al. 2015, eqs. 19-26).

  `F[i, a] = exp(-(a - mu_i)^2 / (2 sigma^2)) / Z_i` with grid centres
  `mu_i = center + (i - size / 2 - 0.5) * delta` for `i = 1..size` and pixel coordinates
  `a = 1..length` (1-based, so that `center = (length + 1) / 2`, i.e. g = 0, is the middle of the
  image), normalised so that `sum_a F[i, a] = 1`.

  Args:
    center: grid centre in pixels, `[B]`.
    delta: stride between filters in pixels, `[B]`.
    sigma2: variance of every filter in pixels^2, `[B]`, > 0.
    size: number of filters N.
    length: number of pixels A along the axis.

  Returns:
    `[B, size, length]`, rows summing to 1.
  """
  i = jnp.arange(1, size + 1, dtype=center.dtype)
  mu = center[:, None] + (i - size / 2 - 0.5) * delta[:, None]
  a = jnp.arange(1, length + 1, dtype=center.dtype)
  log_f = -jnp.square(a - mu[..., None]) / (2.0 * sigma2[:, None, None])
  # exp / sum as a softmax: the exact normalisation with no underflow to 0 / 0 for filters far
  # from the image (implementations that floor the sum at 1e-8 zero those filters instead).
  return jax.nn.softmax(log_f, axis=-1)


def attention_filters(
  params: jax.Array, *, height: int, width: int, size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Filterbanks and intensity from the 5 linear outputs of the decoder state (eqs. 21-24).

  Args:
    params: `[B, 5]`: `(g~X, g~Y, log sigma^2, log delta~, log gamma)`.
    height: image height B (the Y axis).
    width: image width A (the X axis).
    size: N, filters per axis (>= 2).

  Returns:
    `(F_Y [B, N, height], F_X [B, N, width], gamma [B])`.
  """
  gx, gy, log_sigma2, log_delta, log_gamma = jnp.moveaxis(params, -1, 0)
  center_x = (width + 1) / 2 * (gx + 1)
  center_y = (height + 1) / 2 * (gy + 1)
  delta = (max(height, width) - 1) / (size - 1) * jnp.exp(log_delta)
  sigma2 = jnp.exp(log_sigma2)
  fy = filterbank(center_y, delta, sigma2, size=size, length=height)
  fx = filterbank(center_x, delta, sigma2, size=size, length=width)
  return fy, fx, jnp.exp(log_gamma)


def read_glimpse(image: jax.Array, fy: jax.Array, fx: jax.Array) -> jax.Array:
  """`F_Y x F_X^T` per channel: `[B, H, W, C]` -> `[B, N, N, C]`."""
  return jnp.einsum("bnh,bhwc,bmw->bnmc", fy, image, fx, precision=_HIGHEST)


def write_patch(patch: jax.Array, fy: jax.Array, fx: jax.Array) -> jax.Array:
  """`F_Y^T w F_X` per channel: `[B, N, N, C]` -> `[B, H, W, C]`."""
  return jnp.einsum("bnh,bnmc,bmw->bhwc", fy, patch, fx, precision=_HIGHEST)


def gaussian_kl(mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """`KL(N(mu, sigma^2) || N(0, I))` summed over the last axis (Gregor et al. 2015, eq. 11)."""
  return 0.5 * jnp.sum(jnp.square(mu) + jnp.exp(2.0 * log_sigma) - 2.0 * log_sigma - 1.0, axis=-1)


class DrawOutput(NamedTuple):
  """What `Draw.__call__` returns (T is the number of steps)."""

  logits: jax.Array  # final canvas c_T, `[B, H, W, C]`; the image is sigmoid(c_T)
  image: jax.Array  # sigmoid(c_T) in [0, 1], `[B, H, W, C]`
  kl: jax.Array  # KL(Q(z_t|x) || N(0, I)) per step, `[B, T]`
  canvases: jax.Array  # sigmoid(c_t) for t = 1..T, `[T, B, H, W, C]`
  mu: jax.Array  # posterior means, `[T, B, Z]`
  log_sigma: jax.Array  # posterior log standard deviations, `[T, B, Z]`


class _DrawStep(nn.Module):
  """One DRAW step; `Draw` scans it over T steps (parameters shared across steps)."""

  height: int
  width: int
  channels: int
  encoder_size: int
  decoder_size: int
  latent_size: int
  read_size: int
  write_size: int

  def setup(self):
    self.encoder = nn.OptimizedLSTMCell(self.encoder_size)
    self.decoder = nn.OptimizedLSTMCell(self.decoder_size)
    self.posterior = nn.Dense(2 * self.latent_size)
    self.read_attention = nn.Dense(5)
    self.write_attention = nn.Dense(5)
    self.write_params = nn.Dense(self.write_size**2 * self.channels)

  def _filters(self, dense: nn.Dense, h_dec: jax.Array, size: int):
    return attention_filters(dense(h_dec), height=self.height, width=self.width, size=size)

  def _decode(self, dec_state, canvas: jax.Array, z: jax.Array):
    dec_state, h_dec = self.decoder(dec_state, z)
    fy, fx, gamma = self._filters(self.write_attention, h_dec, self.write_size)
    shape = (z.shape[0], self.write_size, self.write_size, self.channels)
    w = self.write_params(h_dec).reshape(shape)
    canvas = canvas + write_patch(w, fy, fx) / gamma[:, None, None, None]
    return dec_state, canvas

  def __call__(self, carry, eps: jax.Array, x: jax.Array):
    canvas, enc_state, dec_state = carry
    h_dec = dec_state[1]  # Flax LSTM carries are (c, h).
    fy, fx, gamma = self._filters(self.read_attention, h_dec, self.read_size)
    x_hat = x - jax.nn.sigmoid(canvas)
    glimpse = jnp.concatenate([read_glimpse(x, fy, fx), read_glimpse(x_hat, fy, fx)], axis=-1)
    r = gamma[:, None] * glimpse.reshape(x.shape[0], -1)
    enc_state, h_enc = self.encoder(enc_state, jnp.concatenate([r, h_dec], axis=-1))
    mu, log_sigma = jnp.split(self.posterior(h_enc), 2, axis=-1)
    z = mu + jnp.exp(log_sigma) * eps
    dec_state, canvas = self._decode(dec_state, canvas, z)
    outputs = (jax.nn.sigmoid(canvas), gaussian_kl(mu, log_sigma), mu, log_sigma)
    return (canvas, enc_state, dec_state), outputs

  def generate(self, carry, z: jax.Array):
    canvas, dec_state = carry
    dec_state, canvas = self._decode(dec_state, canvas, z)
    return (canvas, dec_state), jax.nn.sigmoid(canvas)


class Draw(nn.Module):
  """DRAW with read and write attention; defaults are Ridgeway et al.'s EL-DRAW settings.

  `model.apply(params, x, key)` reconstructs `x` (a `DrawOutput`);
  `model.apply(params, key, n, method=Draw.generate)` draws `n` images with z_t ~ N(0, I).
  `key` supplies the latent noise of all T steps.

  Attributes:
    height, width, channels: image shape.
    steps: T, glimpses per image (32).
    encoder_size, decoder_size: LSTM units (400).
    latent_size: dimension of each z_t (200).
    read_size, write_size: N of the read and write grids (5 x 5), >= 2.
  """

  height: int
  width: int
  channels: int = 1
  steps: int = 32
  encoder_size: int = 400
  decoder_size: int = 400
  latent_size: int = 200
  read_size: int = 5
  write_size: int = 5

  def setup(self):
    if min(self.read_size, self.write_size) < 2:
      raise ValueError(
        f"read_size and write_size must be >= 2 (the filter stride divides by N - 1), got "
        f"{self.read_size} and {self.write_size}. Use read_size=5, write_size=5 as in EL-DRAW."
      )
    # Both methods scan the same parameters: broadcast over steps, never split.
    scan = dict(variable_broadcast="params", split_rngs={"params": False}, length=self.steps)
    step = nn.scan(
      _DrawStep,
      methods={"__call__": {**scan, "in_axes": (0, nn.broadcast)}, "generate": scan},
    )
    self.step = step(
      self.height,
      self.width,
      self.channels,
      self.encoder_size,
      self.decoder_size,
      self.latent_size,
      self.read_size,
      self.write_size,
    )

  def _zeros(self, batch: int, size: int, dtype):
    return jnp.zeros((batch, size), dtype), jnp.zeros((batch, size), dtype)

  def __call__(self, x: jax.Array, key: jax.Array) -> DrawOutput:
    """Reconstructs `x` `[B, H, W, C]` in `[0, 1]`; returns a `DrawOutput`."""
    expected = (self.height, self.width, self.channels)
    if x.ndim != 4 or x.shape[1:] != expected:
      raise ValueError(
        f"Draw was built for images [B, {', '.join(map(str, expected))}], got shape {x.shape}. "
        "Set height, width and channels to the data's shape (NHWC)."
      )
    batch = x.shape[0]
    eps = jax.random.normal(key, (self.steps, batch, self.latent_size), x.dtype)
    carry = (
      jnp.zeros_like(x),
      self._zeros(batch, self.encoder_size, x.dtype),
      self._zeros(batch, self.decoder_size, x.dtype),
    )
    (logits, _, _), (canvases, kl, mu, log_sigma) = self.step(carry, eps, x)
    return DrawOutput(logits, jax.nn.sigmoid(logits), kl.T, canvases, mu, log_sigma)

  def generate(self, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Samples images with z_t ~ N(0, I) and no encoder.

    Returns:
      `(image [B, H, W, C], canvases [T, B, H, W, C])`, both in `[0, 1]`.
    """
    z = jax.random.normal(key, (self.steps, batch_size, self.latent_size))
    canvas = jnp.zeros((batch_size, self.height, self.width, self.channels))
    carry = (canvas, self._zeros(batch_size, self.decoder_size, canvas.dtype))
    (logits, _), canvases = self.step.generate(carry, z)
    return jax.nn.sigmoid(logits), canvases


def binary_cross_entropy_with_logits(x: jax.Array, logits: jax.Array) -> jax.Array:
  """Bernoulli negative log-likelihood of `x` in `[0, 1]` given logits, summed per image, `[B]`."""
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=(1, 2, 3))


def binary_cross_entropy(x: jax.Array, y: jax.Array, *, eps: float = 1e-7) -> jax.Array:
  """Bernoulli negative log-likelihood of `x` given probabilities `y`, summed per image, `[B]`.

  A distance `(x, y) -> [B]` like any other; `y` is clipped to `[eps, 1 - eps]` so that saturated
  pixels give a finite loss. Prefer `binary_cross_entropy_with_logits` where logits exist.
  """
  y = jnp.clip(y, eps, 1.0 - eps)
  return -jnp.sum(x * jnp.log(y) + (1.0 - x) * jnp.log1p(-y), axis=(1, 2, 3))


def draw_loss(
  x: jax.Array,
  output: DrawOutput,
  *,
  distance: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
  weight: float = 1.0,
  kl_weight: jax.Array | float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """EL-DRAW objective `sum_t KL(Q(z_t|x) || P(z_t)) + C * Delta(x, x_hat)` per image.

  Args:
    x: the images `[B, H, W, C]` in `[0, 1]`.
    output: `Draw.__call__(x, key)`.
    distance: `Delta(x, y) -> [B]`, a loss with `x` the reference; `None` is the Bernoulli
      cross-entropy computed from logits, which with `weight=1` is the original DRAW bound.
    weight: C (`DISTANCE_WEIGHTS`: 1 for BCE, 10 for MSE, 500 for SSIM).
    kl_weight: factor of the KL term (1 in the papers; a warm-up ramps it from 0).

  Returns:
    `(loss [B], {"kl": [B], "distortion": [B]})`; average `loss` over the batch to train.
  """
  if distance is None:
    distortion = binary_cross_entropy_with_logits(x, output.logits)
  else:
    distortion = distance(x, output.image)
  kl = jnp.sum(output.kl, axis=-1)
  return kl_weight * kl + weight * distortion, {"kl": kl, "distortion": distortion}


def clip_each_by_norm(max_norm: float = GRADIENT_CLIP_NORM) -> optax.GradientTransformation:
  """Rescales every gradient leaf (weight matrix, bias) separately to L2 norm <= `max_norm`.

  Unlike `optax.clip_by_global_norm`, one large leaf does not shrink the others.
  """
  if max_norm <= 0:
    raise ValueError(f"max_norm must be > 0, got {max_norm}. Ridgeway et al. use 10.0.")

  def clip(g):
    norm = jnp.sqrt(jnp.sum(jnp.square(g)))
    # Divide by max(norm, max_norm): the factor is exactly 1 below the threshold and 0/0 never
    # happens for all-zero leaves.
    return g * (max_norm / jnp.maximum(norm, max_norm)).astype(g.dtype)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
