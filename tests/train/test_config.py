"""Entry-point plumbing shared by every `python -m train.<model>` / `eval.<name>` command."""

import contextlib
import importlib
import io
import os
import pathlib
import runpy
import subprocess
import sys
import warnings

import pytest
from absl import app

from train import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
# The modules whose `python -m` runs config_lib.run; test_trainers_use_the_shared_runner checks
# that the train/ part of this list is exactly the train modules that do (a new trainer must be
# added here).
ENTRY_POINTS = [
  "eval.twoafc",
  *(f"train.{n}" for n in ("autoencoder", "began", "calibrate", "deepsim", "draw", "srcnn", "vae")),
]


def _run_as_main(name, monkeypatch):
  """Executes module `name` as `python -m name` does, with config_lib.run and absl's app.run
  replaced by recorders: returns the calls they got, the module's globals and its stdout."""
  calls = []
  monkeypatch.setattr(config_lib, "run", lambda *args: calls.append(("config_lib.run", *args)))
  monkeypatch.setattr(app, "run", lambda *args, **kw: calls.append(("app.run", *args)))
  monkeypatch.setattr(sys, "argv", [name])
  out = io.StringIO()
  with warnings.catch_warnings(), contextlib.redirect_stdout(out):
    warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": it was imported
    namespace = runpy.run_module(name, run_name="__main__")
  return calls, namespace, out.getvalue()


def test_trainers_use_the_shared_runner(monkeypatch):
  # absl's app.run exits with the main function's return value: a trainer handing back its state
  # printed the whole pytree and exited with status 1. Trainers go through config_lib.run.
  uses_runner = set()
  for path in sorted((REPO / "train").glob("*.py")):
    name = f"train.{path.stem}"
    calls, _, _ = _run_as_main(name, monkeypatch)
    assert not [c for c in calls if c[0] == "app.run"], f"{name} calls absl's app.run itself"
    if calls:
      uses_runner.add(name)
  assert uses_runner == {n for n in ENTRY_POINTS if n.startswith("train.")}


def test_runner_drops_the_result_and_exits_zero():
  script = (
    "import dataclasses\n"
    "from train import config as config_lib\n"
    "@dataclasses.dataclass(frozen=True)\n"
    "class C:\n"
    "  n: int = 1\n"
    "config_lib.run(C, lambda c: {'state': list(range(c.n))})\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", script, "--n=3"],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": str(REPO)},
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr
  assert "state" not in result.stdout + result.stderr


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_main_block_is_one_call(name, monkeypatch):
  """`python -m <name>` does config_lib.run(Config, main) and nothing else: no other call to
  either runner, no name defined beyond those of an import, nothing printed."""
  calls, namespace, printed = _run_as_main(name, monkeypatch)
  assert len(calls) == 1 and calls[0][0] == "config_lib.run", calls
  _, cls, main = calls[0]
  assert cls is namespace["Config"] and main is namespace.get(getattr(main, "__name__", None))
  imported = importlib.import_module(name)
  public = lambda names: {n for n in names if not n.startswith("__")}
  assert public(namespace) == public(vars(imported))
  assert printed == ""


def test_moved_run_resumes_and_changed_training_is_refused(tmp_path):
  from train import config as config_lib
  from train import vae

  first = vae.resolve(vae.Config(loss="l2", arch="tiny", workdir=str(tmp_path / "a")))
  config_lib.save(first, first.workdir)
  moved = tmp_path / "b"
  os.rename(first.workdir, moved)
  # Where the run lives and how often it logs or checkpoints may change on resume ...
  config_lib.save(
    vae.resolve(vae.Config(loss="l2", arch="tiny", workdir=str(moved), log_every=5)), str(moved)
  )
  # ... what it trains may not.
  with pytest.raises(ValueError, match=r"different config \(seed: 0 -> 1\)"):
    config_lib.save(
      vae.resolve(vae.Config(loss="l2", arch="tiny", workdir=str(moved), seed=1)), str(moved)
    )
