"""Fit a metric's parameters to 2AFC judgements (Czolbe et al. 2020, Sec. 4 / WATSON.md).

    python -m train.calibrate --metric=watson_dft --init=init --data=synthetic   # offline demo
    python -m train.calibrate --metric=watson_dct --channels=1 --data=bapps --data_dir=DIR

Fits the metric's parameter pytree and the sigmoid's log-slope g by minimising the binary
cross-entropy between `sigmoid(exp(g) (d0 - d1) / (d0 + d1))` and the judges' fraction
(`perceptual.twoafc`), with dropout on the per-coefficient terms, Adam(lr, beta1=0.5), the learning
rate constant for --constant_epochs then linearly decayed to 0 over --decay_epochs. The workdir
gets `fitted_params.json` (the format of `perceptual/data/watson_weights.json` entries: use it with
`python -m train.vae --loss=watson_dft --loss_params=PATH`), `calibration.json` (2AFC scores per
category on the held-out split before and after), metrics.jsonl and checkpoints/. With
--data=synthetic every output says so: its judges come from a rule, not from people.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from eval import twoafc as twoafc_eval
from perceptual import twoafc, watson
from train import config as config_lib
from train import loop, twoafc_data


def _watson(kind: str) -> Callable[..., jax.Array]:
  fn = watson.watson_dct if kind == "dct" else watson.watson_dft

  def distance(x, y, params, *, key=None, rate=0.0):
    if key is None:
      return fn(x, y, params=params)
    return fn(x, y, params=params, fitting=True, dropout_key=key, dropout_rate=rate)

  return distance


# name -> (distance(x, y, params, *, key, rate) -> [B], initial params(init, channels)). A key turns
# on the fitting mode with dropout at `rate`; without one the distance is the deployed metric's.
METRICS: dict[str, tuple[Callable[..., jax.Array], Callable[[str, int], Any]]] = {
  f"watson_{kind}": (
    _watson(kind),
    functools.partial(
      lambda init, c, kind: watson.watson_params(kind, channels=c, weights=init), kind=kind
    ),
  )
  for kind in ("dct", "dft")
}


@dataclasses.dataclass(frozen=True)
class Config:
  metric: str = config_lib.choice("watson_dft", METRICS, "metric whose parameters are fitted")
  init: str = config_lib.choice("init", watson.WEIGHTS, "starting parameters")
  data: str = config_lib.choice("synthetic", ("synthetic", "bapps"), "synthetic: made-up judges")
  data_dir: str = config_lib.documented("", "BAPPS folder holding 2afc/ (or $BAPPS_DIR)")
  channels: int = 3
  num_train: int = config_lib.documented(2000, "synthetic training records")
  num_test: int = config_lib.documented(500, "synthetic held-out records")
  constant_epochs: int = 10
  decay_epochs: int = 10
  batch_size: int = 50
  eval_batch_size: int = 50
  learning_rate: float = 2e-4
  beta1: float = 0.5
  dropout: float = 0.5
  seed: int = 0
  workdir: str = config_lib.documented("", "default runs/calibrate_<metric>_<data>")
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  log_every: int = 20
  max_steps: int | None = config_lib.documented(None, "stop early (tests)")
  progress: bool = True


class FitState(NamedTuple):
  step: jax.Array
  params: Any  # {"metric": the metric's pytree, "g": log-slope of the sigmoid}
  opt_state: Any


def make_steps(distance: Callable[..., jax.Array], tx: optax.GradientTransformation, rate: float):
  """Pure train / eval steps over 2AFC batches (consts unused)."""

  def train_step(state: FitState, batch, key, consts):
    del consts
    k0, k1 = jax.random.split(key)

    def objective(params):
      d0 = distance(batch["image"], batch["p0"], params["metric"], key=k0, rate=rate)
      d1 = distance(batch["image"], batch["p1"], params["metric"], key=k1, rate=rate)
      bce = twoafc.bce_loss(d0, d1, batch["judge"], params["g"])
      return jnp.mean(bce), jnp.mean(twoafc.score(d0, d1, batch["judge"]))

    (loss, score), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "score": score, "g": state.params["g"]}
    return FitState(state.step + 1, params, opt_state), metrics

  def eval_step(state: FitState, batch, consts):
    del consts
    d0 = distance(batch["image"], batch["p0"], state.params["metric"])
    d1 = distance(batch["image"], batch["p1"], state.params["metric"])
    return {
      "loss": twoafc.bce_loss(d0, d1, batch["judge"], state.params["g"]),
      "score": twoafc.score(d0, d1, batch["judge"]),
    }

  return train_step, eval_step


def create(config: Config, steps_per_epoch: int):
  """The distance, optimizer and initial state."""
  distance, initial = METRICS[config.metric]
  constant = config.constant_epochs * steps_per_epoch
  schedule = optax.join_schedules(
    [
      optax.constant_schedule(config.learning_rate),
      optax.linear_schedule(
        config.learning_rate, 0.0, max(1, config.decay_epochs * steps_per_epoch)
      ),
    ],
    [constant],
  )
  tx = optax.adam(schedule, b1=config.beta1)
  params = {"metric": initial(config.init, config.channels), "g": jnp.zeros((), jnp.float32)}
  return distance, tx, FitState(jnp.zeros((), jnp.int32), params, tx.init(params))


def held_out_scores(distance, params, dataset) -> dict[str, float]:
  """2AFC score per category on the held-out split with the deployed (eval-mode) metric."""
  fn = functools.partial(lambda x, y, p: distance(x, y, p), p=params)
  d0, d1 = twoafc_eval.distances(fn, dataset.test)
  return twoafc_eval.category_scores(d0, d1, dataset.test, dataset.categories)


def train(config: Config) -> FitState:
  """Runs (or resumes) one fit, writes fitted_params.json and calibration.json; the final state."""
  if not config.workdir:
    workdir = os.path.join("runs", f"calibrate_{config.metric}_{config.data}")
    config = dataclasses.replace(config, workdir=workdir)
  config_lib.save(config, config.workdir)
  dataset = twoafc_data.load(
    config.data, channels=config.channels, seed=config.seed, num_train=config.num_train,
    num_test=config.num_test, data_dir=config.data_dir or None,
  )  # fmt: skip
  steps_per_epoch = len(dataset.train) // config.batch_size
  distance, tx, state = create(config, steps_per_epoch)
  train_step, eval_step = make_steps(distance, tx, config.dropout)
  before = held_out_scores(distance, state.params["metric"], dataset)
  settings = loop.settings_from(config, epochs=config.constant_epochs + config.decay_epochs)
  state = loop.fit(state, train_step, eval_step, dataset, settings, max_steps=config.max_steps)
  fitted = jax.device_get(state.params)
  after = held_out_scores(distance, fitted["metric"], dataset)
  if jax.process_index() == 0:
    path = twoafc.save_params(os.path.join(config.workdir, "fitted_params.json"), fitted["metric"])
    report = {
      "data": dataset.name, "synthetic": dataset.synthetic, "metric": config.metric,
      "init": config.init, "channels": config.channels, "steps": int(state.step),
      "g": float(fitted["g"]), "held_out_records": len(dataset.test),
      "score_before": before, "score_after": after, "fitted_params": path,
    }  # fmt: skip
    with open(os.path.join(config.workdir, "calibration.json"), "w") as f:
      json.dump(report, f, indent=2)
    label = " (SYNTHETIC judges)" if dataset.synthetic else ""
    print(f"held-out 2AFC score{label}: {before['mean']:.4f} ({config.init}) -> "
          f"{after['mean']:.4f} (fitted, {int(state.step)} steps); params in {path}")  # fmt: skip
  return state


if __name__ == "__main__":
  config_lib.run(Config, train)
