"""Test-session JAX configuration: 8 simulated CPU devices, fast compilation, a shared XLA cache."""

import os
import tempfile

import jax

# Must run before any JAX backend is initialised: 8 CPU devices let the sharding tests run a real
# ("data",) mesh on one machine; the single-device tests simply use device 0.
jax.config.update("jax_num_cpu_devices", 8)
# Halves compile time on the tiny shapes of the suite; results are unchanged.
jax.config.update("jax_disable_most_optimizations", True)
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", ".tfds"))
# `models`, `train` and `eval` are folders of the checkout, not installed packages: pytest's
# `pythonpath` puts the repository root on this process's path, and this puts it on the path of
# the tests' subprocesses (`python -c "from train import ..."`), whatever their working directory.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")]))

# Many tests compile the same programs again: a trainer run twice (train, then resume), the
# subprocesses of the entry-point tests (5 MNIST runs with one config, 2 CelebA runs). JAX's
# persistent compilation cache, shared by the xdist workers and their subprocesses (through the
# environment), compiles each once: about 12 s saved per CelebA process. Keyed by the program,
# the jax/XLA versions and flags, so reusing it across sessions is safe.
_CACHE = os.path.join(tempfile.gettempdir(), f"perceptual-jax-tests-xla-cache-{os.getuid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
# Subprocesses (python -m train.vae, notebooks) import jax, flax, orbax, tfds from source (~4 s
# each) when PYTHONDONTWRITEBYTECODE is set and the packages were installed without bytecode:
# let the first one write it.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
