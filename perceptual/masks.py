"""Masks of pixel weights in [0, 1]: validation and the normalised (mask-weighted) arithmetic that
every masked metric shares.

A masked metric first zeroes its inputs where the weight is 0 (`zeroed`), so whatever those pixels
hold, NaN and inf included, reaches no value and no gradient; it then takes mask-weighted means
(`weighted_mean`, `normalised_pool`), which are ratios whose denominator may be 0 (`ratio`).
"""

import jax
import jax.numpy as jnp


def checked(mask: jax.Array, x: jax.Array, *, metric: str) -> jax.Array:
  """A mask of weights in [0, 1] for images `x` `[B, ..., C]`, broadcast to `x`'s shape and dtype.

  A mask of `x`'s rank is broadcast to it as it is (one weight per pixel and channel, e.g.
  `[B, H, W, 1]`); a mask of one rank less (`[B, H, W]`, `[1, H, W]`) is one weight per pixel for
  every channel. Values are checked when the mask is concrete (outside `jit`).
  """
  m = jnp.asarray(mask)
  if m.ndim not in (x.ndim, x.ndim - 1):
    raise ValueError(
      f"{metric}: mask must have the images' spatial shape {x.shape[:-1]} (one weight per pixel) "
      f"or their full shape {x.shape} (per channel), or be broadcastable to one of them, got "
      f"shape {m.shape}."
    )
  if m.ndim == x.ndim - 1:
    m = m[..., None]
  try:
    m = jnp.broadcast_to(m, x.shape)
  except ValueError:
    raise ValueError(
      f"{metric}: mask of shape {jnp.shape(mask)} does not broadcast to the images' "
      f"{x.shape[:-1]} (or {x.shape}); give one weight per pixel."
    ) from None
  if m.dtype == jnp.bool_ or jnp.issubdtype(m.dtype, jnp.integer):
    m = m.astype(x.dtype)
  if not jnp.issubdtype(m.dtype, jnp.floating):
    raise ValueError(f"{metric}: mask must hold weights (bool or float), got dtype {m.dtype}.")
  if not isinstance(m, jax.core.Tracer):
    low, high = float(jnp.min(m)), float(jnp.max(m))
    if not (low >= 0.0 and high <= 1.0):  # also catches NaN
      raise ValueError(
        f"{metric}: mask weights must lie in [0, 1], got values in [{low}, {high}]; "
        "use 1 for pixels to compare and 0 for pixels to ignore."
      )
  return m.astype(x.dtype)


def zeroed(mask: jax.Array, x: jax.Array) -> jax.Array:
  """`x` with 0 where `mask` is 0 (a `where`, so NaN there is gone, gradient included)."""
  return jnp.where(mask > 0, x, 0.0)


def ratio(numerator: jax.Array, denominator: jax.Array, *, empty: float) -> jax.Array:
  """numerator / denominator where the denominator is > 0, `empty` elsewhere, with a zero (not
  NaN) gradient there: both branches of a `where` are differentiated, so the divisor is made
  safe first."""
  safe = jnp.where(denominator > 0, denominator, 1.0)
  return jnp.where(denominator > 0, numerator / safe, empty)


def weighted_mean(values: jax.Array, weights: jax.Array, axis, *, empty: float) -> jax.Array:
  """sum(w v) / sum(w) along `axis`; `empty` where the weights sum to 0."""
  return ratio(jnp.sum(weights * values, axis=axis), jnp.sum(weights, axis=axis), empty=empty)


def normalised_pool(
  mask: jax.Array, x: jax.Array, y: jax.Array, *, pool
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A linear pooling `pool` applied as normalised convolution to a pair: the pooled mask, and x's
  and y's mask-weighted means over each pooled window, `pool(m x) / pool(m)` (0 where the window
  has no weight). Pixels of weight 0, and padding the pooling adds, take no part."""
  pooled = pool(mask)
  return pooled, ratio(pool(mask * x), pooled, empty=0.0), ratio(pool(mask * y), pooled, empty=0.0)
