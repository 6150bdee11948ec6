"""Differentiable perceptual image metrics in JAX.

All metrics take float images `[B, H, W, C]` in `[0, max_val]` (NHWC), a reference `x` and a
distorted image or reconstruction `y`, and return one value per image, `[B]`. Options are
keyword-only. `LOSSES` maps names to losses `(x, y) -> [B]` (lower is better).
"""

from perceptual import twoafc
from perceptual.color import rgb_to_grey, rgb_to_ycbcr, rgb_to_yiq
from perceptual.deep import (
  alexnet_features,
  alexnet_random_params,
  deepsim_feature_loss,
  lpips,
  lpips_map,
  vgg16_features,
)
from perceptual.gradient import chroma_similarity, chroma_similarity_map, gms_map, gmsd, gmsm
from perceptual.losses import LOSSES, Fit, Loss, multi_distance
from perceptual.pixel import mae, mse, psnr
from perceptual.pretrained import lpips_params
from perceptual.structural import EQUAL_WEIGHTS, WANG_WEIGHTS, ms_ssim, ms_ssim_maps, ssim, ssim_map
from perceptual.watson import watson_dct, watson_dft, watson_params
