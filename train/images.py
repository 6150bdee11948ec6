"""Image grids saved as PNG, shared by every trainer, evaluation and notebook."""

import os

import numpy as np
from PIL import Image


def grid(images: np.ndarray, *, columns: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles `[N, H, W, C]` images in [0, 1] into one `[rows*(H+pad), cols*(W+pad), C]` image.

  Values outside [0, 1] are an error, not clipped, so a broken output range is noticed.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"grid takes [N, H, W, 1 or 3] images, got shape {images.shape}.")
  lo, hi = float(images.min()), float(images.max())
  if lo < -1e-6 or hi > 1 + 1e-6 or not np.isfinite(images).all():
    raise ValueError(
      f"grid takes images in [0, 1], got values in [{lo}, {hi}]; map tanh outputs with "
      "(y + 1) / 2 before saving."
    )
  n, h, w, c = images.shape
  columns = columns or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / columns))
  canvas = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    canvas[top : top + h, left : left + w] = image
  return canvas


def save_png(path: str, image: np.ndarray, *, scale: int = 1) -> str:
  """Writes one `[H, W, C]` image in [0, 1] as an 8-bit PNG, upscaled by `scale` (nearest)."""
  image = np.asarray(image)
  if scale > 1:
    image = image.repeat(scale, axis=0).repeat(scale, axis=1)
  pixels = np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
  pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(pixels).save(path)
  return path


def save_grid(path: str, images: np.ndarray, *, columns: int | None = None, scale: int = 1) -> str:
  """`grid` + `save_png`; returns the path."""
  return save_png(path, grid(images, columns=columns), scale=scale)


def side_by_side(originals: np.ndarray, reconstructions: np.ndarray, *, columns: int) -> np.ndarray:
  """Interleaves rows of `columns` images: originals, then their reconstructions below them."""
  if len(originals) != len(reconstructions) or len(originals) % columns:
    raise ValueError(
      f"side_by_side needs equally many originals and reconstructions, a multiple of "
      f"columns={columns}; got {len(originals)} and {len(reconstructions)}."
    )
  rows = []
  for start in range(0, len(originals), columns):
    rows += [originals[start : start + columns], reconstructions[start : start + columns]]
  return np.concatenate(rows)
