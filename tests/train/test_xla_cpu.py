"""train.xla_cpu: the XLA_FLAGS tuning the entry points apply before JAX starts."""

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
