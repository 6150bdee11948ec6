"""torchvision's AlexNet and VGG16 feature trunks in torch, loaded from the converted weights.

Stand-ins for `torchvision.models.alexnet` / `vgg16` (absent from .venv-ref, and their pretrained
weights need the internet) that the `lpips` package can build its trunks from. The layer
sequences are copied from torchvision (models/alexnet.py and models/vgg.py, configuration "D"),
so `lpips` indexes `.features` exactly as it does with the real package; only `.features` exists
(LPIPS and DeePSiM use no fully connected layer). The weights are the pickle-free `.npz` files of
`perceptual.pretrained` (HWIO), transposed to torch's OIHW. Used by make_deep_golden.py, which
installs these two builders into the (import-only) torchvision stub before importing `lpips`.
"""

import os
import pathlib

import numpy as np
import torch
from torch import nn

_ROOT = pathlib.Path(__file__).resolve().parents[3]
_FILES = {"alex": "lpips_alex.npz", "vgg": "lpips_vgg.npz"}
_VGG16_CFG = (
  64,
  64,
  "M",
  128,
  128,
  "M",
  256,
  256,
  256,
  "M",
  512,
  512,
  512,
  "M",
  512,
  512,
  512,
  "M",
)


def weights_file(net: str) -> pathlib.Path:
  """The converted weights, where `perceptual.pretrained.weights_path` looks for them."""
  cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "perceptual-jax"
  cache = pathlib.Path(os.environ.get("PERCEPTUAL_JAX_CACHE", cache)).expanduser()
  for folder in (_ROOT / "perceptual" / "data", cache):
    if (folder / _FILES[net]).is_file():
      return folder / _FILES[net]
  raise FileNotFoundError(f"no {_FILES[net]}: run `python -m perceptual.deep fetch` first.")


def load_arrays(net: str) -> dict[str, np.ndarray]:
  with np.load(weights_file(net), allow_pickle=False) as data:
    return {name: data[name] for name in data.files}


def _load_convs(features: nn.Sequential, names: list[str], arrays: dict[str, np.ndarray]) -> None:
  convs = [m for m in features if isinstance(m, nn.Conv2d)]
  assert len(convs) == len(names), (len(convs), names)
  with torch.no_grad():
    for conv, name in zip(convs, names, strict=True):
      kernel = arrays[f"backbone/{name}/kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
      assert conv.weight.shape == kernel.shape, (name, conv.weight.shape, kernel.shape)
      conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
      conv.bias.copy_(torch.from_numpy(arrays[f"backbone/{name}/bias"]))


class AlexNet(nn.Module):
  """torchvision.models.AlexNet's `features` (the classifier is omitted)."""

  def __init__(self):
    super().__init__()
    self.features = nn.Sequential(
      nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(64, 192, kernel_size=5, padding=2),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(192, 384, kernel_size=3, padding=1),
      nn.ReLU(inplace=True),
      nn.Conv2d(384, 256, kernel_size=3, padding=1),
      nn.ReLU(inplace=True),
      nn.Conv2d(256, 256, kernel_size=3, padding=1),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
    )


class VGG16(nn.Module):
  """torchvision.models.VGG's `features` for configuration "D" without batch norm."""

  def __init__(self):
    super().__init__()
    layers, channels = [], 3
    for v in _VGG16_CFG:
      if v == "M":
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        channels = v
    self.features = nn.Sequential(*layers)


def alexnet(pretrained: bool = True, weights=None, **kwargs) -> AlexNet:
  """Like `torchvision.models.alexnet(pretrained=True)`; random (torch default init) otherwise."""
  model = AlexNet()
  if pretrained or weights is not None:
    names = ["conv1", "conv2", "conv3", "conv4", "conv5"]
    _load_convs(model.features, names, load_arrays("alex"))
  return model


def vgg16(pretrained: bool = True, weights=None, **kwargs) -> VGG16:
  """Like `torchvision.models.vgg16(pretrained=True)` (features only)."""
  model = VGG16()
  if pretrained or weights is not None:
    names = [f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
    _load_convs(model.features, names, load_arrays("vgg"))
  return model
