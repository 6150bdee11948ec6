"""The training loop every trainer shares: sharded jitted steps, resumable checkpoints, logs.

A trainer supplies pure functions and data; `fit` owns the mesh, the jit, the epoch/batch
position, the progress bar, metrics.jsonl and the checkpoints:

    state = loop.fit(state, train_step, eval_step, data, settings, on_epoch_end=save_pictures)

`train_step(state, batch, key, consts) -> (state, metrics)` is written for one device; the batch is
sharded over the ("data",) mesh and the state replicated, so the same code runs on 1 or N devices
and on several hosts. The per-step key is `fold_in(key(seed), step)`, so a resumed run draws the
same randomness as an uninterrupted one, and the data position is derived from the step.
"""

import dataclasses
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import tqdm

from train import checkpoints, data, sharding
from train.metrics import MetricsLog


class TrainState(NamedTuple):
  """The state of a trainer with one model and one optimizer; a trainer whose state holds more
  (BatchNorm statistics, a GAN's two networks and optimizers) defines its own NamedTuple."""

  step: Any  # int32 scalar
  params: Any
  opt_state: Any


class Settings(NamedTuple):
  """What the loop needs from a trainer's config."""

  workdir: str
  epochs: int
  batch_size: int
  eval_batch_size: int = 256
  eval_examples: int | None = None  # score only the first N test examples (quick runs)
  seed: int = 0
  checkpoint_every: int = 500  # steps; every evaluated epoch end is checkpointed too
  eval_every: int = 1  # epochs between evaluations (with pictures and a checkpoint); the last one
  keep_checkpoints: int = 2
  log_every: int = 20
  progress: bool = True


def settings_from(config: Any, **overrides: Any) -> Settings:
  """Picks the loop's settings out of any trainer config that has those fields."""
  fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
  return Settings(**{k: fields[k] for k in Settings._fields if k in fields}, **overrides)


@functools.partial(jax.jit, static_argnums=0, static_argnames="method")
def apply(module: Any, variables: Any, *args: Any, method: Any = None) -> Any:
  """`module.apply(variables, *args, method=method)` jitted, compiled once per module and shapes.

  For the pictures trainers draw at every epoch end: a `jax.jit(lambda ...)` built inside the
  picture function is a new function each time and recompiled each epoch (5 s of the MNIST
  VAE's 80 s epoch). Flax modules are hashable dataclasses, so the module is a static argument.
  """
  return module.apply(variables, *args, method=method)


def jit_train_step(train_step: Callable, mesh: jax.sharding.Mesh, seed: int) -> Callable:
  """Jits `train_step(state, batch, key, consts)` as `(state, batch, consts) -> (state, metrics)`.

  The state is donated (updated in place) and kept replicated; the key is folded from the step.
  `consts` (loss weights, a fixed comparator network) are arguments, not baked-in constants,
  so large weights do not inflate the compiled program.
  """
  base_key = jax.random.key(seed)

  def step(state, batch, consts):
    return train_step(state, batch, jax.random.fold_in(base_key, state.step), consts)

  replicated = sharding.replicated(mesh)
  return jax.jit(step, donate_argnums=(0,), out_shardings=(replicated, replicated))


def evaluate(
  eval_step: Callable,
  state: Any,
  split: data.Split,
  *,
  batch_size: int,
  mesh: jax.sharding.Mesh,
  consts: Any = None,
) -> dict[str, float]:
  """Means over a split of `eval_step(state, batch, consts) -> {name: per-image [B] values}`.

  The last batch is padded to a full batch (a multiple of the device count) and the padding
  masked out, so every image counts once. The means do not depend on `batch_size` (up to float
  rounding) because `eval_step` must make each example's values a function of that example only:
  losses scored with `Loss.per_image` (not the batch-pooled training form: Watson's batch-mean
  luminance would otherwise mix in the other images and the padding's copies of example 0),
  models in inference mode (batch norm on its running averages), and any randomness drawn from
  the example's index in the split (`example_keys(batch["index"])`), not from its row.
  """
  jitted = _jitted_eval(eval_step, mesh)
  batch_size = -(-batch_size // mesh.size) * mesh.size  # round up to shard evenly
  totals: dict[str, jax.Array] = {}
  for batch, mask in data.eval_batches(
    split,
    batch_size=batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  ):
    values = jitted(
      state, sharding.global_batch(batch, mesh), sharding.global_batch(mask, mesh), consts
    )
    totals = {k: totals.get(k, 0.0) + v for k, v in values.items()}
  # Every example is in exactly one unmasked slot across processes and batches.
  return {k: float(v) / len(split) for k, v in jax.device_get(totals).items()}


def example_keys(index: jax.Array, *, seed: int = 0) -> jax.Array:
  """One PRNG key per example, `fold_in(key(seed), index)`, `[B]` for int `index` `[B]`.

  For an `eval_step`'s randomness (a latent sample): drawn from `batch["index"]`, the position of
  each example in its split, an example gets the same noise whatever batch and row it is in.
  """
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(index)


_EVAL_CACHE: dict[tuple[int, int], Callable] = {}


def _jitted_eval(eval_step: Callable, mesh: jax.sharding.Mesh) -> Callable:
  cache_key = (id(eval_step), id(mesh))
  if cache_key not in _EVAL_CACHE:

    def masked_sums(state, batch, mask, consts):
      values = eval_step(state, batch, consts)
      return {k: jnp.sum(jnp.where(mask, v, 0.0)) for k, v in values.items()}

    _EVAL_CACHE[cache_key] = jax.jit(masked_sums, out_shardings=sharding.replicated(mesh))
  return _EVAL_CACHE[cache_key]


def early_stopping(metric: str = "test_loss", *, patience: int = 1) -> Callable[[list], bool]:
  """A `stop` rule for `fit`: True once `metric` has not improved for `patience` epochs.

  Args:
    metric: a key of the epoch-end evaluations, e.g. "test_loss" (lower is better).
    patience: epochs without a new minimum before stopping; 1 stops after the first epoch that
      is no better than the best before it (Ridgeway et al.'s rule).

  Returns:
    `stop(history) -> bool`, `history` the list of epoch-end evaluations, oldest first.
  """
  if patience < 1:
    raise ValueError(f"patience must be >= 1 epoch, got {patience}.")

  def stop(history: list[dict[str, float]]) -> bool:
    values = [h[metric] for h in history]
    if len(values) <= patience:
      return False
    return min(values[-patience:]) >= min(values[:-patience])

  return stop


def _epoch_history(workdir: str, steps_per_epoch: int) -> list[dict[str, float]]:
  """The epoch-end evaluations in metrics.jsonl (a resumed run's log is cut at its checkpoint)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return [
    line
    for line in lines
    if "test_loss" in line and line["step"] % steps_per_epoch == 0 and line["step"] > 0
  ]


def _check_finite(values: dict[str, float] | None, step: int, workdir: str) -> None:
  """Stops a diverged run at once instead of training (and checkpointing) NaNs for hours."""
  values = values or {}
  bad = sorted(k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v))
  if bad:
    raise FloatingPointError(
      f"training diverged: {', '.join(bad)} non-finite by step {step} (see "
      f"{os.path.join(workdir, 'metrics.jsonl')}). Lower --learning_rate or the loss weight, or "
      "report it with the config; a rerun resumes from the last checkpoint."
    )


def fit(
  state: Any,
  train_step: Callable,
  eval_step: Callable,
  dataset: data.Dataset,
  settings: Settings,
  *,
  consts: Any = None,
  on_epoch_end: Callable[[Any, int], None] | None = None,
  max_steps: int | None = None,
  stop: Callable[[list[dict[str, float]]], bool] | None = None,
) -> Any:
  """Trains `state` for `settings.epochs` epochs, resuming from `settings.workdir` if it can.

  Args:
    state: the initial train state, a pytree with an integer `step` field.
    train_step: `(state, batch, key, consts) -> (state, metrics)`, single-device code.
    eval_step: `(state, batch, consts) -> {name: [B] per-image values}`, each example's values
      a function of that example only (see `evaluate`); must include "loss", logged as
      `test_loss` (it ranks the best checkpoint).
    dataset: a `train.data.Dataset` (train and test splits).
    settings: loop settings.
    consts: a pytree both steps receive unchanged (loss parameters, fixed networks).
    on_epoch_end: called with the state and the finished epoch (pictures, extra logs) after each
      evaluation: every `settings.eval_every` epochs and at the end of training.
    max_steps: stop after this global step (for tests and benchmarks); epochs still count.
    stop: early stopping, e.g. `early_stopping("test_loss")`: called with the evaluations at the
      ends of the full epochs so far (dicts of `test_*` values with "step"), oldest first; when it
      returns True, training ends. The history is read back from metrics.jsonl on resume, so a
      stopped run stays stopped and an interrupted one stops where it would have.

  Returns:
    The final state (replicated over the mesh).
  """
  mesh = sharding.data_mesh()
  sharding.check_batch_size(settings.batch_size, mesh)
  steps_per_epoch = len(dataset.train) // settings.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f"--batch_size={settings.batch_size} is larger than the training set "
      f"({len(dataset.train)} images); lower it."
    )
  total = settings.epochs * steps_per_epoch
  if max_steps is not None:
    total = min(total, max_steps)

  state = jax.device_put(state, sharding.replicated(mesh))
  consts = jax.device_put(consts, sharding.replicated(mesh))
  mgr = checkpoints.manager(settings.workdir, keep=settings.keep_checkpoints)
  state, restored = checkpoints.restore_latest(mgr, state)
  step = int(restored or 0)
  if restored is not None:
    print(f"resuming from step {step} in {settings.workdir}", flush=True)
  log = MetricsLog(settings.workdir, resume_step=restored)
  history = _epoch_history(settings.workdir, steps_per_epoch) if restored else []
  if stop is not None and stop(history):
    logging.info("early stopping: %s was stopped at step %d", settings.workdir, step)
    total = step
  step_fn = jit_train_step(train_step, mesh, settings.seed)
  local_batch = settings.batch_size // jax.process_count()

  progress = tqdm.tqdm(
    total=total,
    initial=step,
    unit="step",
    file=sys.stdout,
    dynamic_ncols=True,
    disable=not settings.progress or jax.process_index() != 0,
  )
  while step < total:
    epoch, start = divmod(step, steps_per_epoch)
    end = min(steps_per_epoch, total - epoch * steps_per_epoch)
    progress.set_description(f"epoch {epoch + 1}/{settings.epochs}")
    for batch in data.batches(
      dataset.train,
      batch_size=settings.batch_size,
      seed=settings.seed,
      epoch=epoch,
      start=start,
      stop=end,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    ):
      assert len(batch["image"]) == local_batch
      state, metrics = step_fn(state, sharding.global_batch(batch, mesh), consts)
      step += 1
      progress.update()
      if step % settings.log_every == 0 or step == total:
        written = log.defer(step, {"epoch": epoch, **metrics})
        _check_finite(written, step, settings.workdir)
        if written:
          progress.set_postfix({k: f"{v:.4g}" for k, v in written.items() if k != "epoch"})
      if step % settings.checkpoint_every == 0 and step < epoch * steps_per_epoch + end:
        checkpoints.save(mgr, step, state)
    _check_finite(log.flush(), step, settings.workdir)
    if step < total and step % (settings.eval_every * steps_per_epoch) != 0:
      continue
    test = evaluate(
      eval_step,
      state,
      data.head(dataset.test, settings.eval_examples),
      batch_size=settings.eval_batch_size,
      mesh=mesh,
      consts=consts,
    )
    test = {f"test_{k}": v for k, v in test.items()}
    _check_finite(test, step, settings.workdir)
    log.write(step, {"epoch": epoch + (step % steps_per_epoch == 0), **test})
    if step % steps_per_epoch == 0:
      history.append({"step": step, **test})
    progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in test.items()))
    if on_epoch_end is not None and jax.process_index() == 0:
      on_epoch_end(state, epoch)
    checkpoints.save(mgr, step, state, metrics={"test_loss": test["test_loss"]})
    if stop is not None and step % steps_per_epoch == 0 and stop(history):
      progress.write(f"early stopping at step {step}: no improvement (see metrics.jsonl)")
      break
  progress.close()
  mgr.wait_until_finished()
  mgr.close()
  return state
