"""Colour-space conversions between RGB and the luma/chroma spaces of the papers.

All functions take float RGB images `[..., 3]` in `[0, 1]` (channels last) and are linear maps
applied to the last axis (with an offset for YCbCr), so any leading shape works.
"""

import jax
import jax.numpy as jnp

# ITU-R BT.601 luma weights: the "L = R*299/1000 + G*587/1000 + B*114/1000" transform of PIL's
# convert("L") and the grayscale used by Ridgeway et al. and Snell et al.
_LUMA = (0.299, 0.587, 0.114)

# Full-range (JPEG / JFIF) YCbCr, rows Y, Cb, Cr; Cb and Cr are offset by 0.5 after the product.
_YCBCR = (
  _LUMA,
  (-0.168736, -0.331264, 0.5),
  (0.5, -0.418688, -0.081312),
)

# NTSC YIQ (FCC 1953 coefficients, as used by the GMSD/QS implementations of piq and MATLAB).
_YIQ = (
  _LUMA,
  (0.5959, -0.2746, -0.3213),
  (0.2115, -0.5227, 0.3112),
)


def _check_rgb(rgb: jax.Array, name: str) -> jax.Array:
  rgb = jnp.asarray(rgb)
  if rgb.ndim == 0 or rgb.shape[-1] != 3:
    raise ValueError(
      f"{name} takes RGB images with 3 channels in the last axis, got shape {rgb.shape}. "
      "Transpose NCHW input with x.transpose(0, 2, 3, 1)."
    )
  if not jnp.issubdtype(rgb.dtype, jnp.floating):
    raise ValueError(f"{name} takes float images in [0, 1], got dtype {rgb.dtype}.")
  return rgb


def _linear(rgb: jax.Array, matrix: tuple[tuple[float, ...], ...]) -> jax.Array:
  # An explicit weighted sum, not a matmul: exact in float32 on every backend (no TF32) and fused
  # by XLA into the consumer.
  return jnp.stack(
    [row[0] * rgb[..., 0] + row[1] * rgb[..., 1] + row[2] * rgb[..., 2] for row in matrix],
    axis=-1,
  )


# MATLAB's rgb2gray: the first row of the inverse of its YIQ matrix (MathWorks documentation).
_MATLAB_LUMA = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def rgb_to_grey(rgb: jax.Array, *, convention: str = "itu601") -> jax.Array:
  """Luma of RGB images.

  Args:
    rgb: `[..., 3]` float RGB in `[0, 1]`.
    convention: "itu601" (default), ITU-R 601-2 `Y = 0.299 R + 0.587 G + 0.114 B`, as PIL's
      `convert("L")`; "matlab", MATLAB's `rgb2gray` of 8-bit images: `0.298936 R + 0.587043 G +
      0.114021 B` rounded to the nearest of the 256 levels (halves up), the grey image that
      MATLAB reference values (Wang's ssim.m on colour files, IQA-PyTorch's calibration) start
      from. Rounded, so its gradient is 0: for evaluation, not as a training loss's input.

  Returns:
    `[..., 1]`, the luma with a channel axis kept, so the result is again an NHWC image.
  """
  rgb = _check_rgb(rgb, "rgb_to_grey")
  if convention == "itu601":
    return _linear(rgb, (_LUMA,))
  if convention == "matlab":
    return jnp.floor(_linear(rgb, (_MATLAB_LUMA,)) * 255.0 + 0.5) * (1.0 / 255.0)
  raise ValueError(f'rgb_to_grey: convention must be "itu601" or "matlab", got {convention!r}.')


def rgb_to_ycbcr(rgb: jax.Array) -> jax.Array:
  """Full-range (JPEG) YCbCr: Y in `[0, 1]`, Cb and Cr in `[0, 1]` centred on 0.5.

  Args:
    rgb: `[..., 3]` float RGB in `[0, 1]`.

  Returns:
    `[..., 3]` with channels (Y, Cb, Cr).
  """
  rgb = _check_rgb(rgb, "rgb_to_ycbcr")
  return _linear(rgb, _YCBCR) + jnp.array([0.0, 0.5, 0.5], rgb.dtype)


def rgb_to_yiq(rgb: jax.Array) -> jax.Array:
  """NTSC YIQ: Y in `[0, 1]`, I in about `[-0.596, 0.596]`, Q in about `[-0.523, 0.523]`.

  Args:
    rgb: `[..., 3]` float RGB in `[0, 1]`.

  Returns:
    `[..., 3]` with channels (Y, I, Q).
  """
  rgb = _check_rgb(rgb, "rgb_to_yiq")
  return _linear(rgb, _YIQ)
