"""Test-session JAX configuration: 8 simulated CPU devices and fast compilation on tiny shapes."""

import os

import jax

# Must run before any JAX backend is initialised: 8 CPU devices let the sharding tests run a real
# ("data",) mesh on one machine; the single-device tests simply use device 0.
jax.config.update("jax_num_cpu_devices", 8)
# Halves compile time on the tiny shapes of the suite; results are unchanged.
jax.config.update("jax_disable_most_optimizations", True)
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", ".tfds"))
