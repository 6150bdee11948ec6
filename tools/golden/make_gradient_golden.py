"""Writes tests/perceptual/golden/gradient.json: piq GMSD/GMSM values and a chroma reference.

Run from the repository root with the reference venv (torch + piq, no torchvision):

  /work/main/.venv-ref/bin/python tools/golden/make_gradient_golden.py

Inputs are rebuilt by the test from the same declarative recipes (skimage.data photos, cropped
and block-averaged; distortions with seeded numpy noise), so the JSON stores recipes, a checksum
of each input and the expected values, not the images. piq runs in float64 on the float32-rounded
inputs, so the stored values are the exact answer for the float32 images the test builds.

- `gmsd`: `piq.gmsd(x, y, data_range, reduction='none')`.
- `gmsm`: the mean of the same GMS map, built from piq's own pieces (the body of `piq.gmsd` /
  `piq.gmsd._gmsd` with the standard deviation replaced by the mean).
- `grad_gmsd`: d sum(piq.gmsd) / d y by torch autograd (small cases only).
- `chroma`: float64 numpy port of Vertolli & Davies' `chrominance` (models/friqa.py in
  github.com/MichaelOVertolli/Tensorflow-ConnectorGraph) with FCC YIQ and C = 0.0026 on [0, 1]
  data (the library's convention), and `chroma_vd_code`: the same with their rounded YIQ
  coefficients on [0, 255] data, i.e. exactly what their code computes.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "stubs"))

import piq  # noqa: E402
import skimage  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from piq.functional import gradient_map, prewitt_filter, rgb2yiq, similarity_map  # noqa: E402

OUT = os.path.normpath(
  os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "perceptual", "golden"
  )
)

# Each case: a reference image recipe and a distortion; `grad` marks the small cases whose
# gradient is stored; `max_val` scales both images (data_range in piq).
CASES = [
  dict(
    name="camera_noise",
    image=dict(src="camera", top=96, left=160, h=40, w=48, f=4),
    distort=dict(kind="noise", sigma=0.05, seed=1),
  ),
  dict(
    name="camera_blur_odd",
    image=dict(src="camera", top=40, left=60, h=37, w=50, f=4),
    distort=dict(kind="blur"),
  ),
  dict(
    name="moon_contrast",
    image=dict(src="moon", top=0, left=0, h=32, w=32, f=8),
    distort=dict(kind="contrast", gain=0.6),
  ),
  dict(
    name="astronaut_noise",
    image=dict(src="astronaut", top=0, left=64, h=48, w=48, f=4),
    distort=dict(kind="noise", sigma=0.1, seed=2),
  ),
  dict(
    name="coffee_blur_odd",
    image=dict(src="coffee", top=20, left=100, h=33, w=45, f=8),
    distort=dict(kind="blur"),
  ),
  dict(
    name="chelsea_colour_shift",
    image=dict(src="chelsea", top=10, left=80, h=32, w=40, f=6),
    distort=dict(kind="scale_red", gain=0.8),
  ),
  dict(
    name="astronaut_inverse",
    image=dict(src="astronaut", top=200, left=200, h=24, w=24, f=8),
    distort=dict(kind="inverse"),
  ),
  dict(
    name="uniform_grey",
    image=dict(src="uniform", channels=1, h=31, w=26, seed=3),
    distort=dict(kind="uniform", seed=4),
  ),
  dict(
    name="uniform_rgb",
    image=dict(src="uniform", channels=3, h=20, w=24, seed=5),
    distort=dict(kind="uniform", seed=6),
  ),
  dict(
    name="camera_noise_255",
    image=dict(src="camera", top=300, left=300, h=24, w=24, f=4),
    distort=dict(kind="noise", sigma=0.05, seed=7),
    max_val=255.0,
  ),
  dict(
    name="grad_grey",
    image=dict(src="camera", top=200, left=200, h=12, w=15, f=4),
    distort=dict(kind="noise", sigma=0.1, seed=8),
    grad=True,
  ),
  dict(
    name="grad_rgb",
    image=dict(src="astronaut", top=100, left=300, h=11, w=12, f=4),
    distort=dict(kind="noise", sigma=0.1, seed=9),
    grad=True,
  ),
]


def reference_image(spec: dict) -> np.ndarray:
  """[H, W, C] float32 in [0, 1]; keep in sync with tests/perceptual/test_gradient.py."""
  if spec["src"] == "uniform":
    rng = np.random.default_rng(spec["seed"])
    return rng.random((spec["h"], spec["w"], spec["channels"])).astype(np.float32)
  img = getattr(skimage.data, spec["src"])().astype(np.float64) / 255.0
  if img.ndim == 2:
    img = img[..., None]
  h, w, f = spec["h"], spec["w"], spec["f"]
  crop = img[spec["top"] : spec["top"] + h * f, spec["left"] : spec["left"] + w * f]
  return crop.reshape(h, f, w, f, -1).mean(axis=(1, 3)).astype(np.float32)


def distort(x: np.ndarray, spec: dict) -> np.ndarray:
  """The distorted image, float32 in [0, 1]; keep in sync with the test."""
  x = x.astype(np.float64)
  kind = spec["kind"]
  if kind == "noise":
    rng = np.random.default_rng(spec["seed"])
    y = np.clip(x + spec["sigma"] * rng.standard_normal(x.shape), 0.0, 1.0)
  elif kind == "blur":
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    y = sum(p[i : i + x.shape[0], j : j + x.shape[1]] for i in range(3) for j in range(3)) / 9
  elif kind == "contrast":
    y = 0.5 + spec["gain"] * (x - 0.5)
  elif kind == "scale_red":
    y = x.copy()
    y[..., 0] *= spec["gain"]
  elif kind == "inverse":
    y = 1.0 - x
  elif kind == "uniform":
    y = np.random.default_rng(spec["seed"]).random(x.shape)
  else:
    raise ValueError(kind)
  return y.astype(np.float32)


def to_torch(a: np.ndarray, max_val: float) -> torch.Tensor:
  """[H, W, C] float32 -> [1, C, H, W] float64 scaled to [0, max_val]."""
  return torch.from_numpy(a.astype(np.float64) * max_val).permute(2, 0, 1)[None]


def piq_gms_map(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
  """The map inside piq.gmsd, step by step with piq's own functions (piq 0.8.0 gmsd.py)."""
  x, y = x / float(data_range), y / float(data_range)
  if x.size(1) == 3:
    x, y = rgb2yiq(x)[:, :1], rgb2yiq(y)[:, :1]
  down_pad = max(x.shape[2] % 2, x.shape[3] % 2)
  pad = [0, down_pad, 0, down_pad]
  x = F.avg_pool2d(F.pad(x, pad=pad), kernel_size=2, stride=2, padding=0)
  y = F.avg_pool2d(F.pad(y, pad=pad), kernel_size=2, stride=2, padding=0)
  p = prewitt_filter(dtype=x.dtype, device=x.device)
  kernels = torch.stack([p, p.transpose(-1, -2)])
  return similarity_map(gradient_map(x, kernels), gradient_map(y, kernels), constant=170 / 255**2)


def chroma_reference(x: np.ndarray, y: np.ndarray, *, yiq: np.ndarray, scale: float, c: float):
  """mean(S_I * S_Q) of Vertolli & Davies' `chrominance`, float64, images [H, W, 3] in [0, 1]."""
  ix, qx = np.einsum("hwc,kc->khw", np.asarray(x, np.float64) * scale, yiq[1:])
  iy, qy = np.einsum("hwc,kc->khw", np.asarray(y, np.float64) * scale, yiq[1:])

  def dice(r, d):
    return (2 * r * d + c) / (r**2 + d**2 + c)

  return float(np.mean(dice(ix, iy) * dice(qx, qy)))


YIQ_FCC = np.array([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]])
YIQ_VD = np.array([[0.30, 0.59, 0.11], [0.60, -0.28, -0.32], [0.21, -0.52, 0.31]])


def main():
  cases = []
  for case in CASES:
    max_val = case.get("max_val", 1.0)
    x = reference_image(case["image"])
    y = distort(x, case["distort"])
    tx, ty = to_torch(x, max_val), to_torch(y, max_val)
    ty.requires_grad_(case.get("grad", False))
    gmsd = piq.gmsd(tx, ty, data_range=max_val, reduction="none")
    entry = dict(
      name=case["name"],
      image=case["image"],
      distort=case["distort"],
      max_val=max_val,
      shape=list(x.shape),
      checksum_x=float(np.sum(x, dtype=np.float64)),
      checksum_y=float(np.sum(y, dtype=np.float64)),
      gmsd=float(gmsd.detach()[0]),
      gmsm=float(piq_gms_map(tx, ty.detach(), max_val).mean()),
    )
    if case.get("grad", False):
      gmsd.sum().backward()
      entry["grad_gmsd"] = ty.grad[0].permute(1, 2, 0).numpy().tolist()
    if x.shape[-1] == 3:
      entry["chroma"] = chroma_reference(x, y, yiq=YIQ_FCC, scale=1.0, c=0.0026)
      entry["chroma_vd_code"] = chroma_reference(x, y, yiq=YIQ_VD, scale=255.0, c=0.0026)
    cases.append(entry)
  out = dict(
    generator="tools/golden/make_gradient_golden.py",
    versions=dict(
      piq=piq.__version__,
      torch=torch.__version__,
      numpy=np.__version__,
      scikit_image=skimage.__version__,
      python=sys.version.split()[0],
    ),
    dtype="float64 (piq on float32-rounded inputs)",
    cases=cases,
  )
  os.makedirs(OUT, exist_ok=True)
  path = os.path.join(OUT, "gradient.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
  print(f"wrote {path}: {len(cases)} cases")
  for e in cases:
    print(
      f"  {e['name']:24s} gmsd={e['gmsd']:.6f} gmsm={e['gmsm']:.6f}",
      e.get("chroma", ""),
      e.get("chroma_vd_code", ""),
    )


if __name__ == "__main__":
  main()
