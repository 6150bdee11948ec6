"""Fixtures of the trainer tests: entry points run as subprocesses, alone or as a multi-host run."""

import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _subprocess_env() -> dict[str, str]:
  """One CPU device per process (the test session's 8 simulated ones are not inherited)."""
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes_and_one(module: str, root: str, *flags: str, timeout: float = 300):
  """`python -m module --workdir=... *flags` as the two processes of one multi-host launch
  (a coordinator on 127.0.0.1, gloo collectives) and, at the same time, as one process.

  Returns:
    (multi, single): the workdirs of the two runs, under `root`. Fails with the processes' output
    when one of them does not exit with status 0.
  """
  multi, single = os.path.join(root, "multi"), os.path.join(root, "single")
  command = [sys.executable, "-m", module, *flags]
  address = f"--coordinator_address=127.0.0.1:{_free_port()}"
  procs = [
    subprocess.Popen(
      [*command, f"--workdir={multi}", "--num_processes=2", f"--process_id={i}", address],
      cwd=REPO,
      env=_subprocess_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
    )
    for i in range(2)
  ]
  try:
    alone = subprocess.run(
      [*command, f"--workdir={single}"],
      cwd=REPO,
      env=_subprocess_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
    )
    outputs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
  finally:  # a process that hangs (a peer died before the rendezvous) must not outlive the test
    for p in procs:
      p.kill()
  assert alone.returncode == 0, alone.stderr[-3000:]
  assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
  return multi, single


@pytest.fixture
def two_processes_and_one():
  """`two_processes_and_one(module, root, *flags) -> (multi, single)`: see the function."""
  return _two_processes_and_one
