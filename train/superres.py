"""The super-resolution data pipeline of SRCNN: bicubic degradation and aligned random crops.

All functions take NHWC float images in `[0, 1]` (the luma of RGB images: use
`perceptual.color.rgb_to_grey`, the ITU-R 601 Y of the papers) and are pure and jittable.

References:
  Dong, Loy, He, Tang. Learning a deep convolutional network for image super-resolution.
  ECCV 2014, Sec. 4: 33x33 sub-images of bicubic-degraded luma images, upscaling factor 3 (the
  factor here is a parameter; Snell et al. use 4).
  Snell et al. Learning to generate images with perceptual similarity metrics. ICIP 2017.
"""

import jax
import jax.numpy as jnp

from perceptual import checks


def modcrop(images: jax.Array, *, scale: int) -> jax.Array:
  """Crops `[B, H, W, C]` to the largest multiple of `scale` on each side, keeping the top-left.

  MATLAB SRCNN's `modcrop`: downsampling by `scale` then lands on whole pixels, so the
  degradation has exactly the nominal factor.
  """
  height, width = images.shape[1:3]
  return images[:, : height - height % scale, : width - width % scale]


def bicubic_degrade(
  images: jax.Array, *, scale: int = 4, antialias: bool = True, clip: bool = True
) -> jax.Array:
  """Bicubic downsampling by `scale` then bicubic upsampling back to the input size.

  Both steps use `jax.image.resize(..., "bicubic")` (Keys cubic, a = -0.5, the kernel of MATLAB's
  `imresize`). With `antialias=True` the downsampling kernel is stretched by `scale` (a low-pass
  filter before decimation), as MATLAB's `imresize` does by default; `antialias=False` samples
  the cubic interpolant directly and aliases. At the image borders JAX renormalises the truncated
  kernel where MATLAB pads symmetrically, so the outermost few pixels differ slightly. For sizes
  that are not multiples of `scale`, the low-resolution side is `size // scale` and the effective
  factor is `size / (size // scale)`; crop full images with `modcrop` first for an exact factor.

  Args:
    images: `[B, H, W, C]` in `[0, 1]`, with `H, W >= scale`.
    scale: integer downsampling factor.
    antialias: low-pass filter when downsampling (see above).
    clip: clip the result to `[0, 1]` (bicubic interpolation overshoots at edges; the papers work
      on 8-bit images, which clips).

  Returns:
    `[B, H, W, C]`: blurred images of the input's size, the SRCNN input.
  """
  images = checks.as_float_images(images, name="images")
  checks.check_min_size(
    images, scale, metric=f"bicubic_degrade(scale={scale})", hint="Use larger images."
  )
  b, height, width, c = images.shape
  low = jax.image.resize(
    images, (b, height // scale, width // scale, c), "bicubic", antialias=antialias
  )
  # Upsampling never low-passes, so `antialias` only matters for the first resize.
  up = jax.image.resize(low, images.shape, "bicubic", antialias=antialias)
  return jnp.clip(up, 0.0, 1.0) if clip else up


def random_crops(key: jax.Array, images: jax.Array, *, size: int, num_crops: int) -> jax.Array:
  """`num_crops` random `size x size` crops from random images of a batch.

  Each crop picks its image, row and column uniformly (images with replacement).

  Args:
    key: a `jax.random` key.
    images: `[B, H, W, C]`, `H, W >= size`.
    size: crop side in pixels.
    num_crops: number of crops.

  Returns:
    `[num_crops, size, size, C]`.
  """
  checks.check_min_size(images, size, metric="random_crops", hint="Use a smaller crop size.")
  b, height, width, c = images.shape
  k_img, k_row, k_col = jax.random.split(key, 3)
  idx = jax.random.randint(k_img, (num_crops,), 0, b)
  rows = jax.random.randint(k_row, (num_crops,), 0, height - size + 1)
  cols = jax.random.randint(k_col, (num_crops,), 0, width - size + 1)

  def crop(i, r, col):
    return jax.lax.dynamic_slice(images[i], (r, col, 0), (size, size, c))

  return jax.vmap(crop)(idx, rows, cols)


def sr_training_pairs(
  key: jax.Array,
  images: jax.Array,
  *,
  scale: int = 4,
  size: int = 33,
  num_crops: int,
  antialias: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """SRCNN training pairs: aligned `size x size` crops of degraded and original images.

  The whole image is `modcrop`ped and degraded before cropping, as in Dong et al. (degrading a
  33x33 crop on its own would give a fractional factor, 33 / 8, and border effects inside the
  crop).

  Args:
    key: a `jax.random` key.
    images: `[B, H, W, C]` high-resolution images (luma) in `[0, 1]`.
    scale: degradation factor.
    size: crop side.
    num_crops: number of pairs.
    antialias: see `bicubic_degrade`.

  Returns:
    `(inputs, targets)`, each `[num_crops, size, size, C]`; inputs are the bicubic-degraded crops.
  """
  high = modcrop(checks.as_float_images(images, name="images"), scale=scale)
  low = bicubic_degrade(high, scale=scale, antialias=antialias)
  both = random_crops(key, jnp.concatenate([low, high], axis=-1), size=size, num_crops=num_crops)
  c = images.shape[-1]
  return both[..., :c], both[..., c:]


def shave(images: jax.Array, *, border: int) -> jax.Array:
  """Drops `border` pixels on each side of `[B, H, W, C]`: the SR evaluation convention, and the
  target crop matching an SRCNN with "VALID" padding (`border = model.border`)."""
  if border == 0:
    return images
  return images[:, border:-border, border:-border]
