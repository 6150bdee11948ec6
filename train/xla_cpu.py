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
call it first; in a notebook, call it in the first cell). Nothing happens at import. `apply()`
changes nothing when the run's backend will not be CPU (JAX_PLATFORMS names another platform
first, or an accelerator plugin (CUDA, ROCm, TPU) is installed), when JAX's backend has already
started, when XLA_FLAGS already chooses YNNPACK's fusions or the environment tunes glibc's malloc
(the user's choice wins), and for jaxlib versions not checked to know the flag (an unknown flag
in XLA_FLAGS aborts the process). It returns one line saying what it did, which the entry points
print.

`apply()` also makes glibc's malloc keep freed memory for reuse (`reuse_freed_memory`): XLA
allocates each step's buffers afresh on its own threads, and glibc serves allocations above
64 MB on non-main threads with new `mmap`s whose pages the kernel faults in and zeroes on first
touch: 51,700 page faults and 141 ms of system time in every 780 ms MNIST VAE step (two 16.8M
weight matrices, their gradients and Adam moments). With one arena, no mmap and no trimming,
the pages are reused: 5,200 faults, 16 ms, the step 7-8 % faster.
"""

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

import jaxlib  # the version only: importing starts no backend

FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
_CHECKED = ((0, 10), (0, 12))  # jaxlib minor versions, inclusive, known to accept FLAG


def _jaxlib_version() -> tuple[int, int] | None:
  try:
    major, minor = (int(part) for part in jaxlib.__version__.split(".")[:2])
  except ValueError:
    return None
  return major, minor


# Packages whose presence makes JAX pick an accelerator backend by default.
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")


def backend_will_be_cpu() -> bool:
  """Whether JAX, not yet started, will run on CPU (judged without starting it)."""
  chosen = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME") or ""
  if chosen.strip():
    return chosen.split(",")[0].strip().lower() == "cpu"
  if importlib.metadata.entry_points(group="jax_plugins"):
    return False
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def _jax_started() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(bridge, "_backends", None))


def apply() -> str:
  """Tunes this process for XLA:CPU training if its backend will be CPU; says what it did.

  Adds `FLAG` to XLA_FLAGS (if safe and not overridden) and calls `reuse_freed_memory()`.
  """
  if not backend_will_be_cpu():
    return "XLA CPU tuning: not applied (the backend will not be CPU)"
  if _jax_started():
    return "XLA CPU tuning: not applied (JAX had already started its backend)"
  done = []
  if reuse_freed_memory():
    done.append("glibc malloc keeps freed memory")
  flags = os.environ.get("XLA_FLAGS", "")
  version = _jaxlib_version()
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    pass  # the user's own choice
  elif version is not None and _CHECKED[0] <= version <= _CHECKED[1]:
    # First: XLA's parser ignores whatever follows a token that is not a flag.
    os.environ["XLA_FLAGS"] = f"{FLAG} {flags}".strip()
    done.append(f"XLA_FLAGS={FLAG}")
  if not done:
    return "XLA CPU tuning: not applied (set by the environment, or jaxlib not checked)"
  return f"XLA CPU tuning (train.xla_cpu): {'; '.join(done)}"


def one_thread() -> None:
  """XLA:CPU on one thread (the benchmarks' `--threads=1`); only before JAX starts its backend."""
  if _jax_started():
    raise RuntimeError("one_thread() must run before JAX starts its backend (first computation).")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()


_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters
# The same settings as glibc environment variables, for a subprocess (e.g. a benchmark's peer).
MALLOC_ENV = {
  "MALLOC_ARENA_MAX": "1",
  "MALLOC_MMAP_MAX_": "0",
  "MALLOC_TRIM_THRESHOLD_": "2147483647",
}


def reuse_freed_memory() -> bool:
  """Tells glibc's malloc to keep freed memory in one heap; returns whether it was applied.

  Same effect as `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647` in the
  environment, but settable from Python: the arena limit counts only if set before threads other
  than the main one first allocate (before JAX starts its backend). The process keeps its peak
  heap instead of returning freed pages to the system. Left alone (False) off Linux/glibc and when
  the environment already sets any glibc malloc tuning.
  """
  if not sys.platform.startswith("linux") or any(
    name.startswith("MALLOC_") or name == "GLIBC_TUNABLES" for name in os.environ
  ):
    return False
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # musl and others: no mallopt
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
  return all(mallopt(option, value) == 1 for option, value in settings)
