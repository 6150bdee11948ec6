"""SRCNN: three convolutions mapping a bicubic-upsampled luma image to its high-resolution version.

The model takes NHWC float images (the Y channel, `C = 1`, in `[0, 1]`) already upsampled to the
target size (`train.superres.bicubic_degrade` makes them) and returns the restored image with a
linear output, as in Dong et al.; nothing is clipped. The data pipeline (degradation, crops) lives
in `train/superres.py`.

    model = ARCHS["srcnn955"]()
    params = model.init(key, x)     # x: [B, 33, 33, 1]
    y = model.apply(params, x)      # [B, 33, 33, 1] ("SAME"); [B, 17, 17, 1] with "VALID"

References:
  Dong, Loy, He, Tang. Learning a deep convolutional network for image super-resolution.
  ECCV 2014 (9-1-5, 64 and 32 filters, weights N(0, 0.001^2), zero biases).
  Dong, Loy, He, Tang. Image super-resolution using deep convolutional networks. TPAMI 2016
  (the 9-5-5 variant).
  Snell et al. Learning to generate images with perceptual similarity metrics. ICIP 2017.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from perceptual import checks

# Dong et al. draw every weight from a zero-mean Gaussian with standard deviation 0.001.
SRCNN_INIT_STD = 1e-3


class SRCNN(nn.Module):
  """Patch extraction, non-linear mapping and reconstruction convolutions (ReLU, ReLU, linear).

  Attributes:
    kernel_sizes: square kernel sizes of the three layers, 9-5-5 by default.
    features: filters of the first two layers; the last has as many as the input has channels.
    padding: "SAME" (zero padding; the output keeps the input size, so the full-crop SSIM and
      MS-SSIM losses apply) or "VALID" (Dong et al.: no padding; the output loses `border` pixels
      on each side, compare it with `target[:, border:-border, border:-border]`).
    init_std: standard deviation of the Gaussian weight initialisation (biases start at 0).
  """

  kernel_sizes: Sequence[int] = (9, 5, 5)
  features: Sequence[int] = (64, 32)
  padding: str = "SAME"
  init_std: float = SRCNN_INIT_STD

  @property
  def border(self) -> int:
    """Pixels lost on each side with "VALID" padding (0 with "SAME")."""
    if self.padding == "SAME":
      return 0
    return sum((k - 1) // 2 for k in self.kernel_sizes)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Restores upsampled images `[B, H, W, C]`; returns `[B, H - 2 border, W - 2 border, C]`."""
    if self.padding not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME' or 'VALID', got {self.padding!r}.")
    if len(self.kernel_sizes) != 3 or len(self.features) != 2:
      raise ValueError(
        f"SRCNN has three layers: pass 3 kernel_sizes and 2 features, got {self.kernel_sizes} "
        f"and {self.features}."
      )
    x = checks.as_float_images(x, name="x")
    checks.check_min_size(
      x,
      2 * self.border + 1,
      metric="SRCNN with 'VALID' padding",
      hint="Use larger crops or padding='SAME'.",
    )
    conv = functools.partial(
      nn.Conv,
      padding=self.padding,
      kernel_init=nn.initializers.normal(stddev=self.init_std),
      bias_init=nn.initializers.zeros,
    )
    channels = [*self.features, x.shape[-1]]
    activations: list[Callable[[jax.Array], jax.Array] | None] = [nn.relu, nn.relu, None]
    for k, c, act in zip(self.kernel_sizes, channels, activations, strict=True):
      x = conv(c, (k, k))(x)
      if act is not None:
        x = act(x)
    return x


ARCHS = {
  "srcnn955": SRCNN,
  "srcnn915": functools.partial(SRCNN, kernel_sizes=(9, 1, 5)),
  "srcnn955_valid": functools.partial(SRCNN, padding="VALID"),
  # Tiny variant for tests.
  "tiny": functools.partial(SRCNN, kernel_sizes=(3, 1, 3), features=(4, 2)),
}


def get_arch(name: str) -> Callable[..., nn.Module]:
  """Returns the model constructor `ARCHS[name]`; raises a `ValueError` listing valid names."""
  if name not in ARCHS:
    raise ValueError(f"unknown SRCNN arch {name!r}; valid names: {sorted(ARCHS)}.")
  return ARCHS[name]
