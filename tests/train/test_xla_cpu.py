"""train.xla_cpu: the XLA_FLAGS tuning the entry points apply before JAX starts."""

import os
import subprocess
import sys

import pytest

from train import xla_cpu


def test_prepends_the_flag_once(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 10))
  assert xla_cpu.apply()
  # First: XLA ignores everything after a token that is not a flag.
  assert xla_cpu.os.environ["XLA_FLAGS"] == f"{xla_cpu.FLAG} --xla_cpu_multi_thread_eigen=false"
  assert xla_cpu.apply()
  assert xla_cpu.os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_a_users_choice_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
  assert not xla_cpu.apply()
  assert xla_cpu.os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="


def test_unchecked_jaxlib_is_left_alone(monkeypatch):
  # An unknown flag in XLA_FLAGS aborts the process, so versions not checked get nothing.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 99))
  assert not xla_cpu.apply()
  assert "XLA_FLAGS" not in xla_cpu.os.environ


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
