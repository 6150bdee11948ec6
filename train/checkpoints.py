"""Orbax checkpoints: periodic, the latest N kept plus the best by test loss, resumable.

A run restarted in the same workdir resumes from its newest checkpoint. If that checkpoint is
truncated or corrupt (a disk filled up, a copy was interrupted), the previous one is used and a
warning says so; if none can be read the run stops with an error rather than starting over.
"""

import logging
import os
import shutil
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from train import metrics as metrics_lib

BEST_METRIC = "test_loss"


def manager(workdir: str, *, keep: int = 2) -> ocp.CheckpointManager:
  """A manager for `workdir/checkpoints`: the `keep` newest steps plus the lowest test loss."""
  policy = checkpoint_managers.AnyPreservationPolicy(
    [
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(
        get_metric_fn=lambda m: m[BEST_METRIC],
        reverse=True,  # sorted descending and the last n kept: the lowest loss survives
        n=1,
        keep_checkpoints_without_metrics=False,
      ),
    ]
  )
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policy, cleanup_tmp_directories=True, create=True
  )
  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")), options=options
  )


def save(
  mgr: ocp.CheckpointManager, step: int, state: Any, metrics: dict[str, float] | None = None
) -> None:
  """Saves asynchronously; `metrics` (with a test loss) rank the checkpoint for 'best'."""
  mgr.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)


def restore(workdir: str, target: Any, *, best: bool = False) -> Any:
  """The state of a run: its newest readable checkpoint or, with `best`, the one with the lowest
  test loss, restored into the structure of `target` (see `restore_latest`).

  Raises:
    FileNotFoundError: `workdir` holds no checkpoint.
  """
  mgr = manager(workdir)
  try:
    step = best_step(workdir, mgr.all_steps()) if best else None
    if step is None:
      state, step = restore_latest(mgr, target)
    else:
      state = mgr.restore(step, args=ocp.args.StandardRestore(_abstract(target)))
  finally:
    mgr.close()
  if step is None:
    raise FileNotFoundError(f"{workdir} has no checkpoint to load; train it first.")
  return state


def best_step(workdir: str, saved: Iterable[int]) -> int | None:
  """The step of `saved` with the lowest test loss logged in `workdir/metrics.jsonl` (the earliest
  on a tie); None when none was evaluated. The log, not orbax: a manager writes checkpoint metrics
  to disk only when its options have a `best_fn`, so a reopened one does not know them."""
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return None
  saved = set(saved)
  scored = [
    (line[BEST_METRIC], line["step"])
    for line in metrics_lib.read_lines(workdir)
    if BEST_METRIC in line and line["step"] in saved
  ]
  return min(scored)[1] if scored else None


def restore_latest(mgr: ocp.CheckpointManager, target: Any) -> tuple[Any, int | None]:
  """Restores the newest readable checkpoint into the structure/shardings of `target`.

  Leaves of `target` without a sharding (NumPy arrays) are restored onto this process's first
  device, whatever topology saved them: a run of two processes loads in one.

  Returns:
    (state, step), or (target, None) when the workdir has no checkpoint.
  """
  steps = sorted(mgr.all_steps(), reverse=True)
  if not steps:
    return target, None
  abstract = _abstract(target)
  errors = []
  for step in steps:
    try:
      state = mgr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back to the previous.
      logging.warning("checkpoint at step %d is unreadable (%s); trying the previous one.", step, e)
      errors.append(f"step {step}: {type(e).__name__}: {e}")
      continue
    if errors:
      moved = _set_aside(mgr, steps[: len(errors)])
      logging.warning(
        "resumed from step %d after skipping %d unreadable checkpoint(s), moved to %s.",
        step,
        len(errors),
        moved,
      )
    return state, step
  raise RuntimeError(
    f"no checkpoint in {mgr.directory} could be read:\n"
    + "\n".join(errors)
    + "\nDelete that folder to start over, or pass a new --workdir."
  )


def _abstract(target: Any) -> Any:
  """Shapes, dtypes and shardings to restore into. Without a sharding, orbax would use the one
  saved in the checkpoint, which names the devices of the run that wrote it ("Topology mismatch"
  in a process that has other devices)."""
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(a):
    if isinstance(a, np.ndarray):
      return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here)
    return ocp.utils.to_shape_dtype_struct(a)  # keeps a jax.Array's sharding

  return jax.tree.map(leaf, target)


def _set_aside(mgr: ocp.CheckpointManager, steps: list[int]) -> str:
  """Moves unreadable step folders out of the manager's way (the resumed run saves those steps
  again) into `workdir/unreadable_checkpoints/`, kept for inspection rather than deleted."""
  target = os.path.join(os.path.dirname(str(mgr.directory)), "unreadable_checkpoints")
  if jax.process_index() == 0:
    os.makedirs(target, exist_ok=True)
    for step in steps:
      destination = os.path.join(target, str(step))
      if os.path.exists(destination):
        shutil.rmtree(destination)
      shutil.move(os.path.join(str(mgr.directory), str(step)), destination)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("perceptual_jax_unreadable_checkpoints_moved")
  mgr.reload()
  return target
