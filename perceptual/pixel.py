"""Pixel-wise distances.

All functions take a reference `x` and a distorted image `y`, float `[B, H, W, C]` in
`[0, max_val]`, and return one value per image, `[B]`. Values outside `[0, max_val]` are used as
they are (nothing is clipped).
"""

import jax
import jax.numpy as jnp

from perceptual import checks


def mse(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean squared error per image, `[B]`."""
  x, y = checks.as_image_pair(x, y, metric="mse")
  return jnp.mean(jnp.square(x - y), axis=(1, 2, 3))


def mae(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean absolute error per image, `[B]`.

  The derivative of |d| at d = 0 is taken as 0 (not jnp.abs's 1), so identical images give a
  zero gradient.
  """
  x, y = checks.as_image_pair(x, y, metric="mae")
  return jnp.mean(abs_sign_grad(x - y), axis=(1, 2, 3))


def psnr(x: jax.Array, y: jax.Array, *, max_val: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image, `[B]`; +inf for identical images.

  Args:
    x: reference images `[B, H, W, C]` in `[0, max_val]`.
    y: distorted images, same shape.
    max_val: the dynamic range (1.0 for `[0, 1]` images, 255.0 for 8-bit values).

  Returns:
    `10 log10(max_val^2 / mse)`, `[B]`.
  """
  return 10.0 * jnp.log10(max_val**2 / mse(x, y))


@jax.custom_jvp
def abs_sign_grad(d: jax.Array) -> jax.Array:
  """|d| whose derivative at exactly 0 is 0 (sign(d)), as in PyTorch's autodiff."""
  return jnp.abs(d)


@abs_sign_grad.defjvp
def _abs_sign_grad_jvp(primals, tangents):
  (d,), (dd,) = primals, tangents
  return jnp.abs(d), jnp.sign(d) * dd
