"""XLA CPU backend settings for training, applied by the entry points before JAX starts.

jaxlib 0.10-0.12 hand convolutions on CPU to YNNPACK by default. YNNPACK's kernel gradient of a
3x3 convolution (for XLA a convolution whose window is the whole feature map) ran at 3-4
GFLOP/s on an AVX2 EPYC here, ten times the forward convolution's time: 0.5 s of the MNIST VAE's
1.8 s step. Eigen computes it at forward speed, but with YNNPACK off altogether, XLA's own
GEMM for `dy @ W.T` (the dense layers' input gradient) ran at 8 GFLOP/s instead of 50.
Keeping YNNPACK for individual dots only takes the fast path of each: the MNIST VAE trains at
69 img/s instead of 36 on one core (`python -m eval.benchmark_training --threads=1`).

The setting is an environment variable read once, when JAX initialises its backend; `apply()`
therefore only helps before the first computation (the `python -m train.<model>` entry points
call it first; in a notebook, call it in the first cell). It is a no-op when XLA_FLAGS already
chooses YNNPACK's fusions, and for jaxlib versions not checked to know the flag (an unknown flag
in XLA_FLAGS aborts the process).
"""

import os

import jaxlib  # the version only: importing starts no backend

FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
_CHECKED = ((0, 10), (0, 12))  # jaxlib minor versions, inclusive, known to accept FLAG


def _jaxlib_version() -> tuple[int, int] | None:
  try:
    major, minor = (int(part) for part in jaxlib.__version__.split(".")[:2])
  except ValueError:
    return None
  return major, minor


def apply() -> bool:
  """Adds `FLAG` to XLA_FLAGS if it is safe and not overridden; returns whether it is in effect."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return FLAG in flags.split()
  version = _jaxlib_version()
  if version is None or not _CHECKED[0] <= version <= _CHECKED[1]:
    return False
  # First: XLA's parser ignores whatever follows a token that is not a flag.
  os.environ["XLA_FLAGS"] = f"{FLAG} {flags}".strip()
  return True
