"""train.xla_cpu: the XLA_FLAGS tuning the entry points apply before JAX starts."""

import os
import subprocess
import sys

import pytest

from train import xla_cpu


@pytest.fixture
def cpu_run(monkeypatch):
  """A process whose JAX backend will be CPU and has not started (this test process's has)."""
  monkeypatch.setattr(xla_cpu, "backend_will_be_cpu", lambda: True)
  monkeypatch.setattr(xla_cpu, "_jax_started", lambda: False)
  monkeypatch.setattr(xla_cpu, "reuse_freed_memory", lambda: False)  # not in the test process


def test_prepends_the_flag_once(monkeypatch, cpu_run):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 10))
  assert xla_cpu.FLAG in xla_cpu.apply()
  # First: XLA ignores everything after a token that is not a flag.
  assert xla_cpu.os.environ["XLA_FLAGS"] == f"{xla_cpu.FLAG} --xla_cpu_multi_thread_eigen=false"
  assert "not applied" in xla_cpu.apply()  # already the user's (here: our own) setting
  assert xla_cpu.os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_a_users_choice_wins(monkeypatch, cpu_run):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
  assert "not applied" in xla_cpu.apply()
  assert xla_cpu.os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="


def test_unchecked_jaxlib_is_left_alone(monkeypatch, cpu_run):
  # An unknown flag in XLA_FLAGS aborts the process, so versions not checked get nothing.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 99))
  assert "not applied" in xla_cpu.apply()
  assert "XLA_FLAGS" not in xla_cpu.os.environ


def test_nothing_changes_unless_the_backend_will_be_cpu(monkeypatch):
  def must_not_run():
    raise AssertionError("malloc tuned for a run that is not on CPU")

  monkeypatch.setattr(xla_cpu, "reuse_freed_memory", must_not_run)
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 10))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  for platforms in ("cuda", "tpu,cpu"):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert not xla_cpu.backend_will_be_cpu()
    assert "not applied" in xla_cpu.apply()
    assert "XLA_FLAGS" not in xla_cpu.os.environ
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert xla_cpu.backend_will_be_cpu()
  # A process whose JAX has started: too late to change anything.
  monkeypatch.setattr(xla_cpu, "_jax_started", lambda: True)
  assert "already started" in xla_cpu.apply()


def test_an_installed_accelerator_plugin_means_not_cpu(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.delenv("JAX_PLATFORM_NAME", raising=False)
  found = lambda name: object() if name == "jax_cuda12_plugin" else None
  monkeypatch.setattr(xla_cpu.importlib.util, "find_spec", found)
  assert not xla_cpu.backend_will_be_cpu()


_IMPORTS = """
import os, sys
before = dict(os.environ)
import perceptual, train.vae, eval.benchmark_metrics, eval.benchmark_training
from jax._src import xla_bridge
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(changed, bool(xla_bridge._backends))
"""


def test_importing_changes_nothing():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
    [sys.executable, "-c", _IMPORTS], env=env, capture_output=True, text=True, check=True
  )
  assert out.stdout.split("\n")[-2] == "[] False", out.stdout


_FAULTS = """
import resource, sys, threading
import numpy as np
from train import xla_cpu
applied = xla_cpu.reuse_freed_memory() if sys.argv[1] == "reuse" else False
faults = []
def work():  # 100 MB buffers allocated and freed off the main thread, as XLA's are
  for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(25_000_000, np.float32).sum()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(applied, min(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_reuse_freed_memory_avoids_fresh_pages():
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  env.pop("GLIBC_TUNABLES", None)
  run = lambda mode: subprocess.run(
    [sys.executable, "-c", _FAULTS, mode], env=env, capture_output=True, text=True, check=True
  ).stdout.split()
  applied, reused = run("reuse")
  _, fresh = run("default")
  assert applied == "True"
  # A freed 100 MB buffer is reused instead of mapped and faulted in again.
  assert int(reused) * 4 < int(fresh), (reused, fresh)
