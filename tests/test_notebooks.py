"""The Colab notebooks run top to bottom with PERCEPTUAL_SMOKE=1 (tiny settings).

Each notebook runs in a fresh kernel (nbclient), so hidden state from an earlier session cannot
make it pass; the committed copies hold the outputs of a full-mode run.
"""

import os
import tempfile

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, "notebooks")) if f.endswith(".ipynb"))


def test_three_notebooks_exist():
  assert len(NOTEBOOKS) == 3, NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_full_mode_outputs(name):
  book = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
  assert outputs and "full mode" in book.cells[1].outputs[0]["text"]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)  # its figures were drawn


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, monkeypatch):
  monkeypatch.setenv("PERCEPTUAL_SMOKE", "1")
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # The kernel is a separate process, so conftest's JAX settings do not reach it; this one halves
  # the compile time of the tiny smoke-mode shapes there too.
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  book = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  assert "google.colab" in book.cells[1].source  # the Colab install cell comes first
  with tempfile.TemporaryDirectory() as cwd:  # runs/ and temp dirs stay out of the checkout
    client = NotebookClient(
      book, timeout=240, kernel_name="python3", resources={"metadata": {"path": cwd}}
    )
    client.execute()
  errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]  # fmt: skip
  assert not errors
  assert "smoke mode" in book.cells[1].outputs[0]["text"]
