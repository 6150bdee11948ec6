"""The code passes the project's ruff settings (pyproject.toml), as STYLE.md asks."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
  result = subprocess.run(
    [sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
