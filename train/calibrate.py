"""Fit a metric's parameters to 2AFC judgements (Czolbe et al. 2020, Sec. 4 / WATSON.md).

    python -m train.calibrate --metric=watson_dft --init=init --data=synthetic   # offline demo
    python -m train.calibrate --metric=watson_dct --channels=1 --data=bapps --data_dir=DIR
    python -m train.calibrate --metric=lpips_alex --init=init --data=synthetic   # LPIPS heads

Fits the metric's parameter pytree and the sigmoid's log-slope g by minimising the binary
cross-entropy between `sigmoid(exp(g) (d0 - d1) / (d0 + d1))` and the judges' fraction
(`perceptual.twoafc`), with dropout on the per-coefficient terms, Adam(lr, beta1=0.5), the learning
rate constant for --constant_epochs then linearly decayed to 0 over --decay_epochs. The workdir
gets `fitted_params.json` (the format of `perceptual/data/watson_weights.json` entries: use it with
`python -m train.vae --loss=watson_dft --loss_params=PATH`), `calibration.json` (2AFC scores per
category on the held-out split before and after), metrics.jsonl and checkpoints/. With
--data=synthetic every output says so: its judges come from a rule, not from people.

LPIPS (`--metric=lpips_alex | lpips_vgg`): only the linear heads are fitted, the pretrained trunk
stays fixed (passed to the steps as an argument, not baked into the program); the heads are kept
>= 0 after every update, as LPIPS's own training clamps them, and dropout falls on the squared
feature differences. `--init=init` starts from all-ones heads (the paper's unweighted "baseline"
distance), `--init=pretrained` from the published v0.1 heads. `fitted_params.json` then holds
only `heads.*`; `--loss_params=PATH` with `--loss=lpips_alex` loads it over the pretrained trunk.
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import optax

import perceptual
from perceptual import twoafc
from train import config as config_lib
from train import loop, twoafc_data

METRICS: dict[str, perceptual.Fit] = {
  name: loss.fit for name, loss in perceptual.LOSSES.items() if loss.fit is not None
}
INITS = tuple(dict.fromkeys(i for m in METRICS.values() for i in m.inits))


@dataclasses.dataclass(frozen=True)
class Config(config_lib.Loop):
  metric: str = config_lib.choice("watson_dft", METRICS, "metric whose parameters are fitted")
  init: str = config_lib.choice("init", INITS, "starting parameters (which apply: see METRICS)")
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
  workdir: str = config_lib.documented("", "default runs/calibrate_<metric>_<data>")


def make_steps(metric: perceptual.Fit, tx: optax.GradientTransformation, rate: float):
  """Pure train / eval steps over 2AFC batches; consts = the metric's fixed inputs."""
  distance = metric.distance

  def train_step(state: loop.TrainState, batch, key, consts):
    k0, k1 = jax.random.split(key)

    def objective(params):
      d0 = distance(batch["image"], batch["p0"], params["metric"], consts, key=k0, rate=rate)
      d1 = distance(batch["image"], batch["p1"], params["metric"], consts, key=k1, rate=rate)
      bce = twoafc.bce_loss(d0, d1, batch["judge"], params["g"])
      return jnp.mean(bce), jnp.mean(twoafc.score(d0, d1, batch["judge"]))

    (loss, score), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = {**params, "metric": metric.project(params["metric"])}
    metrics = {"loss": loss, "score": score, "g": state.params["g"]}
    return loop.TrainState(state.step + 1, params, opt_state), metrics

  def eval_step(state: loop.TrainState, batch, consts):
    d0 = distance(batch["image"], batch["p0"], state.params["metric"], consts)
    d1 = distance(batch["image"], batch["p1"], state.params["metric"], consts)
    return {
      "loss": twoafc.bce_loss(d0, d1, batch["judge"], state.params["g"]),
      "score": twoafc.score(d0, d1, batch["judge"]),
    }

  return train_step, eval_step


def create(config: Config, steps_per_epoch: int):
  """The metric, optimizer and initial state."""
  metric = METRICS[config.metric]
  if config.init not in metric.inits:
    raise ValueError(
      f"--init={config.init} does not apply to {config.metric}; use one of {metric.inits}."
    )
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
  params = {
    "metric": metric.initial(config.init, config.channels),
    "g": jnp.zeros((), jnp.float32),
  }
  return metric, tx, loop.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def held_out_scores(metric: perceptual.Fit, params, consts, dataset) -> dict[str, float]:
  """2AFC score per category on the held-out split with the deployed (eval-mode) metric."""
  fn = functools.partial(lambda x, y, p, c: metric.distance(x, y, p, c), p=params, c=consts)
  d0, d1 = twoafc_data.distances(fn, dataset.test)
  return twoafc_data.category_scores(d0, d1, dataset.test, dataset.categories)


def train(config: Config) -> loop.TrainState:
  """Runs (or resumes) one fit, writes fitted_params.json and calibration.json; the final state."""
  if not config.workdir:
    workdir = os.path.join("runs", f"calibrate_{config.metric}_{config.data}")
    config = dataclasses.replace(config, workdir=workdir)
  config_lib.start(config)
  dataset = twoafc_data.load(
    config.data, channels=config.channels, seed=config.seed, num_train=config.num_train,
    num_test=config.num_test, data_dir=config.data_dir or None,
  )  # fmt: skip
  steps_per_epoch = len(dataset.train) // config.batch_size
  metric, tx, state = create(config, steps_per_epoch)
  consts = metric.consts(config.channels)
  train_step, eval_step = make_steps(metric, tx, config.dropout)
  before = held_out_scores(metric, state.params["metric"], consts, dataset)
  settings = loop.settings_from(config, epochs=config.constant_epochs + config.decay_epochs)
  state = loop.fit(
    state, train_step, eval_step, dataset, settings, consts=consts, max_steps=config.max_steps
  )
  fitted = jax.device_get(state.params)
  after = held_out_scores(metric, fitted["metric"], consts, dataset)
  if jax.process_index() == 0:
    path = twoafc.save_params(
      os.path.join(config.workdir, "fitted_params.json"), metric.saved(fitted["metric"])
    )
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
