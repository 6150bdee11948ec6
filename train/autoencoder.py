"""Train Ridgeway et al.'s and Snell et al.'s autoencoders with any loss of `perceptual.LOSSES`.

    python -m train.autoencoder --arch=conv256 --loss=ssim       # embedded MNIST, early stopping
    python -m train.autoencoder --arch=conv256 --loss=l2 --dataset=fashion_mnist_debian
    python -m train.autoencoder --arch=snell128_yale --loss=ms_ssim --nobinary   # 48 px photo crops

Objective: the batch mean of the per-image loss between the image and its reconstruction, both in
[0, 1] (the tanh output mapped by `to_unit_range`; the model sees `2 x - 1`). Ridgeway et al.'s
optimiser: SGD with momentum 0.9, weight decay 5e-5, batch 64. `--validation` training images are
held out; after every epoch their mean loss is the validation value, and training stops at the
first epoch that does not improve on it (`--patience`). The checkpoint with the best validation
value is then scored on the test split with every registry metric (`final_test_*` in
metrics.jsonl) and its reconstructions are drawn (reconstructions.png: rows of originals, then
reconstructions). `eval.autoencoders` compares trained workdirs.
"""

import dataclasses
import os
from typing import Any

import jax
import numpy as np
import optax

import perceptual
from models import autoencoder as ae
from train import config as config_lib
from train import data, images, loop, metrics, sharding

# Ridgeway et al. give 5e-5 for MSE and 5e-2 for SSIM. Their MSE is Caffe's EuclideanLoss, the
# halved squared error summed over the pixels, whose gradient is pixels / 2 times that of the
# per-pixel mean (`l2`) used here; `resolve` scales 5e-5 by that factor (0.0256 at 32x32), so the
# steps match theirs. l1 gets the same (same per-pixel gradient scale, our choice). Every other
# loss (bounded, per-image means like 1 - SSIM) gets the SSIM rate, our choice, untuned.
PIXEL_LR = 5e-5
PERCEPTUAL_LR = 5e-2
PIXEL_LOSSES = ("l1", "l2")


@dataclasses.dataclass(frozen=True)
class Config(config_lib.Loop):
  loss: str = config_lib.choice("l2", perceptual.LOSSES, "training loss (and early-stop metric)")
  arch: str = config_lib.choice("conv256", ae.ARCHS, "autoencoder (models.autoencoder.ARCHS)")
  bottleneck: int | None = config_lib.documented(None, "code units; default by arch")
  binary: bool = config_lib.documented(True, "binary (sign, straight-through) code; else tanh")
  dataset: str = config_lib.documented(
    "", "default mnist_embedded (28 px padded to 32); skimage_patches for snell128*"
  )
  validation: int = config_lib.documented(1000, "training images held out for early stopping")
  epochs: int = config_lib.documented(100, "at most; early stopping usually ends sooner")
  patience: int = config_lib.documented(1, "epochs without improvement before stopping")
  batch_size: int = 64
  eval_batch_size: int = 500
  learning_rate: float | None = config_lib.documented(None, "default by loss, see PIXEL_LR")
  momentum: float = 0.9
  weight_decay: float = 5e-5
  workdir: str = config_lib.documented("", "default runs/ae_<arch>_<loss>")
  checkpoint_every: int = 1000
  test_metrics: bool = config_lib.documented(True, "score the test split with every metric")


def build_model(config: Config) -> ae.ConvAutoencoder | ae.DenseAutoencoder:
  """The autoencoder of `config.arch` with its bottleneck size and code kind."""
  default = ae.ARCHS[config.arch]()
  continuous = "tanh" if default.code == "binary" else default.code
  return ae.ARCHS[config.arch](
    code_dim=config.bottleneck or default.code_dim, code="binary" if config.binary else continuous
  )


def resolve(config: Config) -> Config:
  """Fills the dataset, learning rate and workdir left unset."""
  height, width, channels = build_model(config).image_shape
  filled: dict[str, Any] = {}
  if not config.dataset:
    filled["dataset"] = "skimage_patches" if config.arch.startswith("snell") else "mnist_embedded"
  if config.learning_rate is None:
    pixel = config.loss in PIXEL_LOSSES
    filled["learning_rate"] = PIXEL_LR * height * width * channels / 2 if pixel else PERCEPTUAL_LR
  if not config.workdir:
    filled["workdir"] = os.path.join("runs", f"ae_{config.arch}_{config.loss}")
  return dataclasses.replace(config, **filled)


def load_data(config: Config) -> tuple[data.Dataset, data.Split]:
  """`(dataset, test)`: the loop's dataset (train minus validation, and validation as its test
  split, for early stopping) and the real test split. Grey by ITU-R 601-2 luma (`train.data`)."""
  height, _, channels = build_model(config).image_shape
  full = data.load(config.dataset, image_size=height, channels=channels, seed=config.seed)
  n = len(full.train)
  if not 0 < config.validation < n:
    raise ValueError(f"--validation={config.validation} must be in (0, {n}); lower it.")
  perm = np.random.default_rng(config.seed).permutation(n)
  held, kept = np.sort(perm[: config.validation]), np.sort(perm[config.validation :])

  train, validation = data.subset(full.train, kept), data.subset(full.train, held)
  return dataclasses.replace(full, train=train, test=validation), full.test


def make_steps(model, tx: optax.GradientTransformation, loss: perceptual.Loss):
  """Pure steps; consts = {"loss": params, "metrics": {name: params}} (metrics may be empty)."""

  def reconstruct(params, x):
    return ae.to_unit_range(model.apply({"params": params}, ae.from_unit_range(x)))

  def train_step(state: loop.TrainState, batch, key, consts):
    x = batch["image"]

    def objective(params):
      per_image = loss(
        x, reconstruct(params, x), params=consts["loss"], key=key if loss.uses_key else None
      )
      return per_image.mean()

    value, grads = jax.value_and_grad(objective)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return loop.TrainState(state.step + 1, params, opt_state), {"loss": value}

  def eval_step(state: loop.TrainState, batch, consts):
    x = batch["image"]
    recon = reconstruct(state.params, x)
    values = {
      "loss": loss.per_image(x, recon, params=consts["loss"]),
      "psnr": perceptual.psnr(x, recon),
    }
    for name, params in consts["metrics"].items():
      values[name] = perceptual.LOSSES[name].per_image(x, recon, params=params)
    return values

  return train_step, eval_step


def create(config: Config):
  """The model, optimizer and initial state of a resolved config."""
  model = build_model(config)
  tx = optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(config.learning_rate, momentum=config.momentum),
  )
  x = np.zeros((1, *model.image_shape), np.float32)
  params = jax.jit(model.init)(jax.random.key(config.seed), x)["params"]  # one compile
  return model, tx, loop.TrainState(np.zeros((), np.int32), params, tx.init(params))


def load(workdir: str, *, best: bool = True) -> tuple[Config, Any, loop.TrainState]:
  """The config, model and best (lowest validation loss) or latest state of a run."""
  return config_lib.load_run(workdir, Config, create, best=best)


def save_reconstructions(model, state: loop.TrainState, test: data.Split, path: str) -> str:
  """32 test images spread over the split (some are sorted by label) over their reconstructions,
  two rows of 16 pairs."""
  x = test.gather(np.linspace(0, len(test) - 1, min(32, len(test))).astype(int))["image"]
  y = ae.to_unit_range(model.apply({"params": jax.device_get(state.params)}, ae.from_unit_range(x)))
  return images.save_grid(path, images.side_by_side(x, np.asarray(y), columns=16), columns=16)


def train(config: Config) -> loop.TrainState:
  """Runs (or resumes) one run, then scores its best checkpoint on the test split."""
  config = resolve(config)
  config_lib.start(config)
  dataset, test = load_data(config)
  model, tx, state = create(config)
  loss = perceptual.LOSSES[config.loss]
  channels = model.image_shape[-1]
  train_step, eval_step = make_steps(model, tx, loss)
  consts = {"loss": loss.params(channels), "metrics": {}}
  path = os.path.join(config.workdir, "reconstructions.png")
  state = loop.fit(
    state,
    train_step,
    eval_step,
    dataset,
    loop.settings_from(config),
    consts=consts,
    on_epoch_end=lambda state, epoch: save_reconstructions(model, state, test, path),
    max_steps=config.max_steps,
    stop=loop.early_stopping("test_loss", patience=config.patience),
  )
  _, _, best = load(config.workdir)
  if config.test_metrics:
    consts["metrics"] = {
      n: m.params(channels) for n, m in perceptual.LOSSES.items() if channels in m.channels
    }
  mesh = sharding.data_mesh()
  best, consts = jax.device_put((best, consts), sharding.replicated(mesh))
  scores = loop.evaluate(
    eval_step, best, test, batch_size=config.eval_batch_size, mesh=mesh, consts=consts
  )
  if jax.process_index() == 0:
    save_reconstructions(model, best, test, path)
    record = {"step": int(state.step), "final_step": int(best.step)}
    metrics.write_final(
      config.workdir, {**record, **{f"final_test_{k}": v for k, v in scores.items()}}
    )
    print(f"test scores of step {int(best.step)}: {scores}; outputs in {config.workdir}")
  return state


if __name__ == "__main__":
  config_lib.run(Config, train)
