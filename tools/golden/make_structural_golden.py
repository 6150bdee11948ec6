"""Golden SSIM / MS-SSIM values from pytorch_msssim (and a pytorch-ssim style 'SAME' SSIM).

Run with the reference environment (torch, pytorch_msssim, scikit-image):

  /work/main/.venv-ref/bin/python tools/golden/make_structural_golden.py

Writes tests/perceptual/golden/structural.json. The inputs are rebuilt by the tests from
`make_inputs()` (crops of skimage.data.astronaut() and seeded numpy noise, quantised to 8 bits so
they are bit-identical in both environments); torch is imported only in `main()`.
"""

import json
import os
import sys

import numpy as np

OUT = os.path.join(
  os.path.dirname(__file__), "..", "..", "tests", "perceptual", "golden", "structural.json"
)


def _q(v: np.ndarray) -> np.ndarray:
  """Quantises to 8-bit levels in [0, 1], as float32 (exact in both environments)."""
  return (np.round(np.clip(v, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def _box3(v: np.ndarray) -> np.ndarray:
  """3x3 box blur with edge replication of an [H, W, C] image."""
  p = np.pad(v, ((1, 1), (1, 1), (0, 0)), mode="edge")
  h, w = v.shape[:2]
  return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def make_inputs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Named (x, y) pairs, float32 NHWC in [0, 1]."""
  from skimage import data

  rng = np.random.default_rng(20240611)
  img = data.astronaut().astype(np.float64) / 255.0  # [512, 512, 3]
  a, b = img[100:292, 150:342], img[300:492, 20:212]  # two 192x192 crops
  x_photo = np.stack([_q(a), _q(b)])
  y_photo = np.stack([_q(a + 0.08 * rng.standard_normal(a.shape)), _q(_box3(b))])
  grey = img @ np.array([0.299, 0.587, 0.114])
  g = grey[50:243, 200:371, None]  # 193x171: odd sizes on both axes
  x_odd = _q(g)[None]
  y_odd = _q(g + 0.05 * rng.standard_normal(g.shape))[None]
  n1 = rng.random((2, 64, 64, 3))
  x_noise = _q(n1)
  y_noise = _q(0.7 * n1 + 0.3 * rng.random(n1.shape))
  return {
    "photo": (x_photo, y_photo),
    "photo_anti": (x_photo, (1.0 - x_photo).astype(np.float32)),
    "grey_odd": (x_odd, y_odd),
    "noise64": (x_noise, y_noise),
  }


def main() -> None:
  import importlib
  import importlib.metadata as md

  import pytorch_msssim
  import torch
  import torch.nn.functional as F

  pm_ssim_mod = importlib.import_module("pytorch_msssim.ssim")

  # float64 throughout (window included): the golden values are the algorithms' exact results,
  # not float32 noise (the 121-tap 2-D float32 convolution of pytorch-ssim alone is ~2e-5 off).
  torch.set_default_dtype(torch.float64)

  def nchw(v):
    return torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2)).astype(np.float64))

  def gauss(c):
    # pytorch_msssim's _fspecial_gauss_1d computed in float64: its float32 window sums to 1 only
    # to ~1e-7, which E[x^2] - E[x]^2 amplifies to ~2e-5 on smooth bright images.
    coords = torch.arange(11, dtype=torch.float64) - 11 // 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    return (g / g.sum()).reshape(1, 1, 1, -1).repeat(c, 1, 1, 1)

  def ms_ssim_any_scales(x, y, weights):
    # pytorch_msssim.ms_ssim minus its assertion that images exceed 160 px whatever the number
    # of scales: the same per-scale `_ssim`, relu and odd-size avg_pool2d padding.
    win = gauss(x.shape[1])
    w = x.new_tensor(weights)
    mcs = []
    for i in range(len(weights)):
      ssim_pc, cs = pm_ssim_mod._ssim(x, y, win=win, data_range=1.0, size_average=False)
      if i < len(weights) - 1:
        mcs.append(torch.relu(cs))
        pad = [s % 2 for s in x.shape[2:]]
        x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    stack = torch.stack(mcs + [torch.relu(ssim_pc)], dim=0)
    return torch.prod(stack ** w.view(-1, 1, 1), dim=0).mean(1)

  def ssim_same(x, y):
    # pytorch-ssim (Po-Hsun Su) as used by Czolbe et al.: 2-D Gaussian window, zero padding
    # window_size // 2, groups=channels, mean of the map (here per image).
    c = x.shape[1]
    g = gauss(1).reshape(-1)
    win = torch.outer(g, g).expand(c, 1, 11, 11).contiguous()

    def blur(v):
      return F.conv2d(v, win, padding=5, groups=c)

    mu1, mu2 = blur(x), blur(y)
    s1, s2, s12 = blur(x * x) - mu1**2, blur(y * y) - mu2**2, blur(x * y) - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return m.mean(dim=(1, 2, 3))

  funcs = {
    "ssim": lambda x, y: pytorch_msssim.ssim(
      x, y, data_range=1.0, size_average=False, win=gauss(x.shape[1])
    ),
    "ssim_same": ssim_same,
    "ms_ssim": lambda x, y: pytorch_msssim.ms_ssim(
      x, y, data_range=1.0, size_average=False, win=gauss(x.shape[1])
    ),
    "ms_ssim_3": lambda x, y: ms_ssim_any_scales(x, y, [0.0448, 0.2856, 0.3001]),
  }
  cases = {}
  for name, (x, y) in make_inputs().items():
    entry = {
      "shape": list(x.shape),
      "x_sum": float(x.astype(np.float64).sum()),
      "y_sum": float(y.astype(np.float64).sum()),
    }
    for fname, f in funcs.items():
      if fname == "ms_ssim" and min(x.shape[1:3]) <= 160:
        continue
      yt = nchw(y).requires_grad_(True)
      val = f(nchw(x), yt)
      (grad,) = torch.autograd.grad(val.sum(), yt)
      g = grad.numpy()
      entry[fname] = {
        "value": val.detach().numpy().astype(float).tolist(),
        "grad_sum": float(g.astype(np.float64).sum()) if np.isfinite(g).all() else None,
        "grad_abs_sum": float(np.abs(g.astype(np.float64)).sum()) if np.isfinite(g).all() else None,
        "grad_finite": bool(np.isfinite(g).all()),
      }
    cases[name] = entry
  versions = {p: md.version(p) for p in ("torch", "pytorch_msssim", "scikit-image", "numpy")}
  out = {
    "generated_by": "tools/golden/make_structural_golden.py",
    "python": sys.version.split()[0],
    "versions": versions,
    "dtype": "float64",
    "notes": "values per image (size_average=False); grads w.r.t. y of value.sum(), in NCHW "
    "(sums are layout independent). ms_ssim_3: pytorch_msssim's algorithm with 3 scales.",
    "cases": cases,
  }
  with open(OUT, "w") as fh:
    json.dump(out, fh, indent=1)
  print("wrote", os.path.abspath(OUT))


if __name__ == "__main__":
  main()
