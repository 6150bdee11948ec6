"""JSON-lines metrics that never block asynchronous dispatch.

The trainer hands over the device arrays of step t only after it has dispatched step t + 1, so
reading them to the host overlaps with the device's work (the JAX training cookbook's pattern).
"""

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np


class MetricsLog:
  """Appends one JSON object per line to `workdir/metrics.jsonl` (process 0 of a multi-host run
  writes; the others compute the same replicated values and discard them)."""

  def __init__(self, workdir: str, *, resume_step: int | None = None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._writer = jax.process_index() == 0
    self._pending: tuple[int, dict[str, Any]] | None = None
    if not self._writer:
      return
    if resume_step is not None:
      self._truncate_after(resume_step)
    elif os.path.exists(self.path):
      os.remove(self.path)

  def _truncate_after(self, step: int) -> None:
    """Drops lines a killed run wrote after its last checkpoint: the resumed run rewrites them."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    with open(self.path, "w") as f:
      f.writelines(kept)

  def write(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
    """Writes `metrics` now (blocking on any device arrays in it); returns the floats written."""
    values = {k: _to_python(v) for k, v in jax.device_get(metrics).items()}
    if not self._writer:
      return values
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **values}) + "\n")
    return values

  def defer(self, step: int, metrics: dict[str, Any]) -> dict[str, float] | None:
    """Queues this step's metrics and writes the previous step's; returns what was written."""
    previous, self._pending = self._pending, (step, metrics)
    return None if previous is None else self.write(*previous)

  def flush(self) -> dict[str, float] | None:
    """Writes the queued step's metrics, if any; returns them."""
    pending, self._pending = self._pending, None
    return None if pending is None else self.write(*pending)


def write_final(workdir: str, record: dict[str, Any]) -> None:
  """Appends a run's final scores (keys `final_*`) to metrics.jsonl, replacing earlier ones.

  A finished run that is started again (to resume or extend it) scores itself again; this keeps
  one final line, the last. Training lines never have `final_*` keys. Only process 0 writes.
  """
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "metrics.jsonl")
  lines = []
  if os.path.exists(path):
    with open(path) as f:
      lines = [line for line in f if line.strip()]
  lines = [line for line in lines if not any(k.startswith("final_") for k in json.loads(line))]
  with open(path, "w") as f:
    f.writelines([*lines, json.dumps({k: _to_python(v) for k, v in record.items()}) + "\n"])


def _to_python(value: Any) -> Any:
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def read_lines(workdir: str) -> list[dict[str, Any]]:
  """The lines of `workdir/metrics.jsonl`, in order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _plain(value: Any) -> Any:
  """numpy scalars and arrays to JSON-serialisable Python values."""
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def _cell(value: Any, float_format: str) -> str:
  value = _plain(value)
  if isinstance(value, float):
    return format(value, float_format)
  return str(value)


def write_table(
  rows: Sequence[Mapping[str, Any]],
  out_dir: str,
  name: str,
  *,
  title: str = "",
  float_format: str = ".4f",
) -> dict[str, str]:
  """Writes `rows` as `<out_dir>/<name>.json` and a Markdown table `<out_dir>/<name>.md`.

  Args:
    rows: one mapping per row; the columns are the keys, in order of first appearance.
    out_dir: folder (created if missing).
    name: file stem.
    title: heading of the Markdown file and `"title"` of the JSON.
    float_format: format of floats in the Markdown (the JSON keeps full precision).

  Returns:
    `{"json": path, "md": path}`.
  """
  if not rows:
    raise ValueError(f"write_table({name!r}) got no rows; pass at least one result.")
  columns = list(dict.fromkeys(key for row in rows for key in row))
  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, f"{name}.json"), "md": os.path.join(out_dir, f"{name}.md")}
  plain_rows = [{key: _plain(value) for key, value in row.items()} for row in rows]
  with open(paths["json"], "w") as f:
    json.dump({"title": title, "columns": columns, "rows": plain_rows}, f, indent=2)
  lines = [f"# {title}", ""] if title else []
  lines.append("| " + " | ".join(columns) + " |")
  lines.append("|" + "---|" * len(columns))
  for row in rows:
    lines.append("| " + " | ".join(_cell(row.get(c, ""), float_format) for c in columns) + " |")
  with open(paths["md"], "w") as f:
    f.write("\n".join(lines) + "\n")
  return paths
