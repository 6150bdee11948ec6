"""Pixel-wise distances.

All functions take a reference `x` and a distorted image `y`, float `[B, H, W, C]` (or volumes
`[B, D, H, W, C]`) in `[0, max_val]`, and return one value per image, `[B]`. Values outside
`[0, max_val]` are used as they are (nothing is clipped).
"""

import jax
import jax.numpy as jnp

from perceptual import checks, masks


def mse(x: jax.Array, y: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """Mean squared error per image, `[B]`.

  With `mask` (weights in [0, 1], `[B, H, W]` or per channel `[B, H, W, C]`, or broadcastable to
  either), the weighted mean `sum(m (x - y)^2) / sum(m)`; pixels of weight 0 change nothing
  (NaN included) and get a zero gradient; an image whose mask is all 0 gets 0.
  """
  x, y = checks.as_image_pair(x, y, metric="mse", volumes=True)
  return _mean(jnp.square, x, y, mask, "mse")


def mae(x: jax.Array, y: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """Mean absolute error per image, `[B]` (`mask` as in `mse`).

  The derivative of |d| at d = 0 is taken as 0 (not jnp.abs's 1), so identical images give a
  zero gradient.
  """
  x, y = checks.as_image_pair(x, y, metric="mae", volumes=True)
  return _mean(abs_sign_grad, x, y, mask, "mae")


def psnr(
  x: jax.Array, y: jax.Array, *, max_val: float = 1.0, mask: jax.Array | None = None
) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image, `[B]`; +inf for identical images.

  Args:
    x: reference images `[B, H, W, C]` in `[0, max_val]`.
    y: distorted images, same shape.
    max_val: the dynamic range (1.0 for `[0, 1]` images, 255.0 for 8-bit values).
    mask: weights of the pixels, as in `mse` (an all-0 mask gives +inf).

  Returns:
    `10 log10(max_val^2 / mse)`, `[B]`.
  """
  return 10.0 * jnp.log10(max_val**2 / mse(x, y, mask=mask))


def _mean(error, x, y, mask, metric):
  """The (mask-weighted) mean of `error(x - y)` per image."""
  axes = tuple(range(1, x.ndim))
  if mask is None:
    return jnp.mean(error(x - y), axis=axes)
  m = masks.checked(mask, x, metric=metric)
  d = masks.zeroed(m, x - y)
  return masks.weighted_mean(error(d), m, axes, empty=0.0)


@jax.custom_jvp
def abs_sign_grad(d: jax.Array) -> jax.Array:
  """|d| whose derivative at exactly 0 is 0 (sign(d)), as in PyTorch's autodiff."""
  return jnp.abs(d)


@abs_sign_grad.defjvp
def _abs_sign_grad_jvp(primals, tangents):
  (d,), (dd,) = primals, tangents
  return jnp.abs(d), jnp.sign(d) * dd
