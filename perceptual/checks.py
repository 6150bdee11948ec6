"""Input validation shared by every metric.

Each check raises a `ValueError` at trace time that names the problem and the fix, so a bad call
fails before anything is compiled.
"""

import jax
import jax.numpy as jnp


def as_float_images(x: jax.Array, *, name: str = "x", volumes: bool = False) -> jax.Array:
  """Checks one `[B, H, W, C]` float image batch (with `volumes`, also `[B, D, H, W, C]`) and
  returns it in at least float32.

  Half-precision inputs (bfloat16, float16) are promoted so that means, variances and powers are
  computed in float32; float64 stays float64 when x64 is enabled.
  """
  x = jnp.asarray(x)
  if x.ndim != 4 and not (volumes and x.ndim == 5):
    kinds = "[B, H, W, C] (rank 4)" + (" or volumes [B, D, H, W, C] (rank 5)" if volumes else "")
    raise ValueError(
      f"{name} must be a batch of images of shape {kinds}, got shape {x.shape}. "
      "Add a batch axis with x[None] or a channel axis with x[..., None]."
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
      f"{name} has dtype {x.dtype}; metrics take float images in [0, max_val]. "
      "Convert integer images with x.astype(jnp.float32) / 255."
    )
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def as_image_pair(
  x: jax.Array,
  y: jax.Array,
  *,
  channels: tuple[int, ...] | None = None,
  metric: str = "metric",
  volumes: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Checks a reference `x` and a distorted `y` of the same shape; returns both as float32+.
  With `volumes`, `[B, D, H, W, C]` pairs are accepted too."""
  x = as_float_images(x, name="x", volumes=volumes)
  y = as_float_images(y, name="y", volumes=volumes)
  if x.shape != y.shape:
    raise ValueError(
      f"{metric}: x and y must have the same shape, got x {x.shape} and y {y.shape}."
    )
  if channels is not None and x.shape[-1] not in channels:
    raise ValueError(
      f"{metric} takes images with {' or '.join(map(str, channels))} channels in the last axis "
      f"(NHWC), got shape {x.shape}. Grey images need a trailing channel axis of size 1; "
      "convert other layouts with x.transpose(0, 2, 3, 1) from NCHW."
    )
  dtype = jnp.promote_types(x.dtype, y.dtype)
  return x.astype(dtype), y.astype(dtype)


def check_min_size(x: jax.Array, min_size: int, *, metric: str, hint: str) -> None:
  """Raises if the spatial size of `x` (`[B, ..., C]`) is below `min_size` pixels on any side."""
  spatial = x.shape[1:-1]
  if min(spatial) < min_size:
    raise ValueError(
      f"{metric} needs images of at least {'x'.join([str(min_size)] * len(spatial))} pixels, "
      f"got {'x'.join(map(str, spatial))}. {hint}"
    )
