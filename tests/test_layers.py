"""The layers import downward only: perceptual < models < train < eval.

`perceptual` is the installed library (pure metric functions); `models` holds Flax modules built
on it; `train` the trainers and their data, checkpoints and per-run reports; `eval` the papers'
tables, figures and benchmarks, which may import everything below it.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ("perceptual", "models", "train", "eval")


def _imported_layers(path: pathlib.Path) -> set[tuple[str, int]]:
  """Top-level project packages imported anywhere in `path` (also inside functions)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [node.module]
    else:
      continue
    found.update((name.split(".")[0], node.lineno) for name in names)
  return {(name, line) for name, line in found if name in LAYERS}


def _sources(layer):
  return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_go_downward_only(layer):
  rank = LAYERS.index(layer)
  assert _sources(layer), f"no sources found under {layer}/"
  upward = [
    f"{path.relative_to(ROOT)}:{line} imports {name}"
    for path in _sources(layer)
    for name, line in _imported_layers(path)
    if LAYERS.index(name) > rank
  ]
  assert not upward, f"{layer} may import only {LAYERS[: rank + 1]}: " + "; ".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
  path = tmp_path / "m.py"
  path.write_text("import numpy\n\ndef f():\n  from eval import report\n")
  assert _imported_layers(path) == {("eval", 4)}
