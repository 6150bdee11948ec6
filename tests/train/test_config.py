"""Entry-point plumbing shared by every `python -m train.<model>` / `eval.<name>` command."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
ENTRY_POINTS = sorted(
  str(path.relative_to(REPO))
  for package in ("train", "eval")
  for path in (REPO / package).glob("*.py")
  if "config_lib.run(" in path.read_text()
)


def test_trainers_use_the_shared_runner():
  # absl's app.run exits with the main function's return value: a trainer handing back its state
  # printed the whole pytree and exited with status 1. Trainers go through config_lib.run.
  for path in (REPO / "train").glob("*.py"):
    assert "app.run(" not in path.read_text() or path.name == "config.py", path.name
  assert {"train/vae.py", "train/deepsim.py", "train/calibrate.py"} <= set(ENTRY_POINTS)


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


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_entry_point_main_block_is_one_call(path):
  tree = ast.parse((REPO / path).read_text())
  blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
  assert len(blocks) == 1 and len(blocks[0].body) == 1, ast.unparse(blocks[0])


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
