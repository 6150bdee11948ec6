"""Train the VAEs of Czolbe et al. (2020) with any loss of `perceptual.LOSSES`.

    python -m train.vae --loss=watson_dft                 # MNIST config, embedded data, ~5-7 min
    python -m train.vae --loss=watson_dft --schedule=paper   # Czolbe et al.'s 250 epochs at 1e-4
    python -m train.vae --loss=ssim --arch=celeba --dataset=skimage_patches
    python -m train.vae --loss=l2 --dataset=tfds:celeb_a --arch=celeba   # when prepared in tfds

Objective `lambda * sum_batch L_rec(x, x_hat) + sum_batch KLD`, Adam with the learning rate halved
every 100 (MNIST) / 20 (CelebA) epochs. With `l2_warmup` epochs, L_rec is first the summed squared
error (with `l2_scale="loss"` rescaled to the loss's value), then blends linearly into the chosen
loss over `l2_blend` epochs; with `freeze_encoder` the encoder learns only while L2 has a share
(the short MNIST run's recipe; the paper trains on the loss alone). The workdir gets
config.json, metrics.jsonl, checkpoints/ and PNGs (reconstructions, samples, the latent manifold
for a 2-d latent, interpolations). On
MNIST-like data the last line of metrics.jsonl holds the digit classifier's `final_digits_*` scores
of the final state (`train.digits`: class accuracy of reconstructions, coverage of samples).
"""

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import perceptual
from models import vae as vae_models
from perceptual import twoafc
from train import config as config_lib
from train import data, digits, images, loop, metrics

# lambda = e^k per loss, from the authors' table (WATSON.md) where they give one; the others are
# ours: l1/l2 sum over pixels (lambda = number of pixels), the SSIM family as SSIM.
LOG_LAMBDA = {
  "mnist": {"ssim": 9.0, "ms_ssim": 9.0, "watson_dft": 1.0, "lpips_vgg": 9.0, "lpips_alex": 9.0},
  "celeba": {
    "ssim": 12.0,
    "ms_ssim": 12.0,
    "watson_dft": 1.0,
    "lpips_vgg": 10.0,
    "lpips_alex": 10.0,
  },
}
# Training on the loss alone from the first step, scored every epoch (as the paper does).
LOSS_ONLY = dict(l2_warmup=0, l2_blend=0, freeze_encoder=False, eval_every=1)
PRESETS = {  # arch -> defaults for the fields left unset (None / "")
  # The default MNIST run is a 10-minute version of the authors' 250 epochs: 14 epochs at 10x
  # their learning rate, the first 8 on L2 (scaled to the loss's value), blended into the loss
  # over the next 3, the encoder frozen as L2 hands over (see docs/vae_short_run.md: trained
  # from scratch for 500 steps, Watson-DFT organises the 2-d latent by stroke texture, not digit
  # class). At 1e-4, 6 epochs of Watson-DFT leave a flat grey image (test PSNR 6.4); at 3e-3 the
  # decoder dies (black images) within the first epoch.
  # `--schedule=paper` is theirs (PAPER_SCHEDULE).
  "mnist": dict(
    dataset="mnist_embedded",
    image_size=32,
    channels=1,
    batch_size=128,
    halve_every=100,
    epochs=14,
    learning_rate=1e-3,
    l2_warmup=8,
    l2_blend=3,
    freeze_encoder=True,
    eval_every=3,
  ),
  "celeba": dict(
    dataset="skimage_patches",
    image_size=64,
    channels=3,
    batch_size=64,
    halve_every=20,
    epochs=3,
    learning_rate=1e-4,
    **LOSS_ONLY,
  ),
  "tiny": dict(
    dataset="mnist_embedded",
    image_size=32,
    channels=1,
    batch_size=16,
    halve_every=100,
    epochs=1,
    learning_rate=1e-3,
    **LOSS_ONLY,
  ),
}
# The paper's MNIST training: 250 epochs at Adam's 1e-4 on the loss alone.
PAPER_SCHEDULE = dict(epochs=250, learning_rate=1e-4, **LOSS_ONLY)


@dataclasses.dataclass(frozen=True)
class Config(config_lib.Loop):
  loss: str = config_lib.choice("watson_dft", perceptual.LOSSES, "reconstruction loss")
  schedule: str = config_lib.choice(
    "short", ("short", "paper"), "short: the ten-minute MNIST run; paper: Czolbe et al.'s (mnist)"
  )
  arch: str = config_lib.choice("mnist", vae_models.ARCHS, "mnist (z=2) | celeba (z=256) | tiny")
  dataset: str = config_lib.documented(
    "", f"{sorted(data.DATASETS)} or tfds:<name>; default by arch"
  )
  image_size: int | None = None
  channels: int | None = None
  latent: int | None = None
  loss_weight: float | None = config_lib.documented(None, "lambda; default e^k from the table")
  loss_params: str = config_lib.documented(
    "", "JSON of fitted loss params (python -m train.calibrate); default the loss's own"
  )
  epochs: int | None = None
  batch_size: int | None = None
  eval_batch_size: int = 250
  eval_examples: int | None = config_lib.documented(
    None, "score only the first N test images at each evaluation (quick runs); default all"
  )
  learning_rate: float | None = config_lib.documented(
    None, "Adam's; default by arch (mnist 1e-3 for the short run, the paper's 1e-4 for celeba)"
  )
  halve_every: int | None = config_lib.documented(None, "epochs between learning-rate halvings")
  l2_warmup: int | None = config_lib.documented(
    None, "epochs trained on L2 before the loss (default by arch: mnist 8, the paper's 0)"
  )
  l2_blend: int | None = config_lib.documented(
    None, "epochs over which L2 blends linearly into the loss after l2_warmup (mnist 3)"
  )
  l2_scale: str = config_lib.choice(
    "loss",
    ("loss", "pixels"),
    "the L2 term while it has a share: loss = the summed squared error rescaled, per batch, to "
    "the value of lambda * loss (the KL term keeps the weight it has against the loss); pixels = "
    "the summed squared error as it is",
  )
  freeze_encoder: bool | None = config_lib.documented(
    None,
    "the encoder learns at the L2 share of the learning rate, so it stops when L2 has handed "
    "over and the loss trains the decoder on the latent layout L2 learnt (mnist: on)",
  )
  eval_every: int | None = config_lib.documented(
    None, "epochs between test evaluations, pictures and checkpoints (mnist 3, else 1)"
  )
  workdir: str = config_lib.documented("", "default runs/vae_<arch>_<loss>")
  test_metrics: bool = config_lib.documented(
    True, "score test reconstructions with every metric (and, on MNIST-like data, train.digits)"
  )


def resolve(config: Config) -> Config:
  """Fills the fields left unset from the arch preset (with `schedule="paper"`, the paper's
  MNIST schedule) and the authors' lambda table.

  A loss the table lacks (l1, l2: means over pixels) gets lambda = the number of values per image
  of the resolved config, `image_size^2 * channels` (not the preset's), so that it sums over them.
  """
  preset = PRESETS[config.arch]
  if config.schedule == "paper":
    if config.arch != "mnist":
      raise ValueError(
        f"--schedule=paper is Czolbe et al.'s MNIST training; for --arch={config.arch} set "
        "--epochs and --learning_rate instead."
      )
    preset = {**preset, **PAPER_SCHEDULE}
  filled = {k: v for k, v in preset.items() if getattr(config, k) in (None, "")}
  image_size = filled.get("image_size", config.image_size)
  channels = filled.get("channels", config.channels)
  if image_size != preset["image_size"]:
    raise ValueError(
      f"--arch={config.arch} decodes {preset['image_size']}x{preset['image_size']} images, got "
      f"--image_size={image_size}; leave it unset or pick the arch of that size."
    )
  if config.loss_weight is None:
    k = LOG_LAMBDA.get(config.arch, LOG_LAMBDA["mnist"]).get(config.loss)
    filled["loss_weight"] = float(image_size**2 * channels) if k is None else math.exp(k)
  if config.latent is None:
    filled["latent"] = 2 if config.arch in ("mnist", "tiny") else 256
  if not config.workdir:
    filled["workdir"] = os.path.join("runs", f"vae_{config.arch}_{config.loss}")
  no_l2 = not (filled.get("l2_warmup", config.l2_warmup) or filled.get("l2_blend", config.l2_blend))
  if config.freeze_encoder is None and no_l2:  # the preset's choice needs L2 epochs
    filled["freeze_encoder"] = False
  config = dataclasses.replace(config, **filled)
  if config.freeze_encoder and no_l2:
    raise ValueError(
      "--freeze_encoder stops the encoder when L2 hands over to the loss, and this run has no "
      "L2 epochs (--l2_warmup=0 --l2_blend=0): its encoder would never learn. Pass "
      "--freeze_encoder=false or give it L2 epochs."
    )
  return config


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def _variables(state: TrainState) -> dict[str, Any]:
  return {
    "params": state.params,
    **({"batch_stats": state.batch_stats} if state.batch_stats else {}),
  }


def l2_share(step: jax.Array, warmup_steps: int, blend_steps: int) -> jax.Array:
  """The weight of L2 in the reconstruction term at `step`: 1 for the first `warmup_steps`, then
  falling linearly to 0 over `blend_steps`, 0 after."""
  return jnp.clip(1.0 - (step - warmup_steps) / max(blend_steps, 1), 0.0, 1.0)


def l2_phase_steps(config: Config, steps_per_epoch: int) -> tuple[int, int]:
  """(warm-up, blend) of a resolved config in steps: the arguments of `l2_share`."""
  return config.l2_warmup * steps_per_epoch, config.l2_blend * steps_per_epoch


def make_steps(
  model: vae_models.VAE,
  tx: optax.GradientTransformation,
  loss: perceptual.Loss,
  loss_weight: float,
  *,
  l2_steps: tuple[int, int] = (0, 0),
  l2_scale: str = "pixels",
):
  """The pure train and eval steps; consts = {"loss": params, "metrics": {name: params}}.

  `l2_steps` = (warm-up, blend) in steps: the training objective's reconstruction term is
  `share * w * sum_pixels (x - x_hat)^2 + (1 - share) * loss_weight * loss`,
  `share = l2_share(step)`, summed over the batch; w = 1 with `l2_scale="pixels"`, and with
  "loss" the batch's `loss_weight * loss / sum (x - x_hat)^2`, held constant under
  differentiation: the L2 term then has the loss term's value and L2's gradient direction.
  The eval step scores `loss` alone.
  """

  def train_step(state: TrainState, batch, key, consts):
    x = batch["image"]
    key_z, key_loss = jax.random.split(key)

    def objective(params):
      (recon, mu, logvar), updates = model.apply(
        {**_variables(state), "params": params}, x, key_z, train=True, mutable=["batch_stats"]
      )
      rec = loss(x, recon, params=consts["loss"], key=key_loss if loss.uses_key else None)
      kld = vae_models.kl_divergence(mu, logvar)
      total = loss_weight * jnp.sum(rec)
      if any(l2_steps):
        share = l2_share(state.step, *l2_steps)
        squared_error = jnp.sum(jnp.square(recon - x))
        if l2_scale == "loss":
          tiny = jnp.finfo(squared_error.dtype).tiny
          squared_error = squared_error * jax.lax.stop_gradient(
            total / jnp.maximum(squared_error, tiny)
          )
        total = share * squared_error + (1 - share) * total
      total = total + jnp.sum(kld)
      return total, (updates.get("batch_stats", {}), jnp.mean(rec), jnp.mean(kld))

    grads, (batch_stats, rec, kld) = jax.grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_weight * rec + kld, "rec": rec, "kld": kld}
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

  def eval_step(state: TrainState, batch, consts):
    """Per-image test loss (z = mu) and every registry metric of the reconstruction."""
    x = batch["image"]
    mu, logvar = model.apply(_variables(state), x, method=vae_models.VAE.encode)
    recon = model.apply(_variables(state), mu, method=vae_models.VAE.decode)
    rec = loss.per_image(x, recon, params=consts["loss"])
    kld = vae_models.kl_divergence(mu, logvar)
    values = {
      "loss": loss_weight * rec + kld,
      "rec": rec,
      "kld": kld,
      "psnr": perceptual.psnr(x, recon),
    }
    for name, params in consts["metrics"].items():
      values[name] = perceptual.LOSSES[name].per_image(x, recon, params=params)
    return values

  return train_step, eval_step


def metric_params(channels: int) -> dict[str, Any]:
  """Default params of every registry loss that takes this many channels (the test metrics).

  A loss whose weights are not on this machine (LPIPS-VGG before `python -m perceptual.deep
  fetch`) is left out with a warning, so the run still scores every other metric.
  """
  params = {}
  for name, loss in perceptual.LOSSES.items():
    if channels in loss.channels:
      try:
        params[name] = loss.params(channels)
      except FileNotFoundError as e:
        logging.warning("test metric %s skipped: %s", name, e)
  return params


def coders(model: vae_models.VAE, state: TrainState) -> tuple[Callable, Callable]:
  """`(encode, decode)` of a state, jitted once per model: images -> latent means, latents ->
  images (for pictures, scoring and evaluation outside the train step)."""
  variables = _variables(jax.device_get(state))
  encode = lambda x: loop.apply(model, variables, x, method=vae_models.VAE.encode)[0]  # noqa: E731
  decode = lambda z: loop.apply(model, variables, z, method=vae_models.VAE.decode)  # noqa: E731
  return encode, decode


def save_pictures(
  model: vae_models.VAE, state: TrainState, test: data.Split, workdir: str, *, seed: int
) -> dict[str, str]:
  """Reconstructions, samples, the latent manifold (2-d latents) and interpolations as PNGs."""
  encode, decode = coders(model, state)
  x = test.gather(np.linspace(0, len(test) - 1, 32).astype(int))["image"]  # spread over the split
  mu = encode(x)
  latent = mu.shape[-1]
  z = jax.random.normal(jax.random.key(seed), (64, latent))
  paths = {
    "reconstructions": images.save_grid(
      os.path.join(workdir, "reconstructions.png"),
      images.side_by_side(x, np.asarray(decode(mu)), columns=16),
      columns=16,
      scale=2,
    ),
    "samples": images.save_grid(
      os.path.join(workdir, "samples.png"), np.asarray(decode(z)), columns=8, scale=2
    ),
  }
  t = np.linspace(0.0, 1.0, 10)[None, :, None]
  pairs = jnp.asarray(mu[:8, None] * (1 - t) + mu[8:16, None] * t).reshape(-1, latent)
  paths["interpolations"] = images.save_grid(
    os.path.join(workdir, "interpolations.png"),
    np.asarray(decode(pairs)),
    columns=10,
    scale=2,
  )
  if latent == 2:
    axis = np.linspace(-1.5, 1.5, 15)
    grid = np.stack(np.meshgrid(axis, axis[::-1]), axis=-1).reshape(-1, 2).astype(np.float32)
    grid = grid[:, ::-1]  # rows vary z_1 (top = +1.5), columns vary z_0
    paths["manifold"] = images.save_grid(
      os.path.join(workdir, "manifold.png"),
      np.asarray(decode(grid)),
      columns=15,
      scale=2,
    )
  return paths


def create(config: Config, steps_per_epoch: int):
  """The model, optimizer and initial state of a resolved config."""
  model = vae_models.ARCHS[config.arch](latent=config.latent, channels=config.channels)
  schedule = optax.exponential_decay(
    config.learning_rate, config.halve_every * steps_per_epoch, 0.5, staircase=True
  )
  tx = optax.adam(schedule)
  if config.freeze_encoder:  # the encoder's updates scaled by the L2 share of the objective
    phases = l2_phase_steps(config, steps_per_epoch)
    encoder = optax.chain(tx, optax.scale_by_schedule(lambda step: l2_share(step, *phases)))
    tx = optax.multi_transform(
      {"encoder": encoder, "decoder": tx}, lambda params: {name: name for name in params}
    )
  shape = (1, config.image_size, config.image_size, config.channels)

  @jax.jit  # one compiled program instead of one per initializer: seconds faster to start
  def init(key):
    variables = model.init(key, jnp.zeros(shape), jax.random.key(0))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))

  return model, tx, init(jax.random.key(config.seed))


def load(workdir: str) -> tuple[Config, vae_models.VAE, TrainState]:
  """The config, model and latest checkpointed state of a run (for notebooks and evaluation)."""

  def create_from(config: Config):  # the learning-rate schedule counts epochs of this data
    dataset = data.load(config.dataset, image_size=config.image_size, channels=config.channels)
    return create(config, data.steps_per_epoch(dataset.train, batch_size=config.batch_size))

  return config_lib.load_run(workdir, Config, create_from)


def digit_scores(
  model: vae_models.VAE,
  state: TrainState,
  test: data.Split,
  classifier: digits.Classifier,
  *,
  seed: int,
  num_samples: int = 400,
) -> dict[str, float]:
  """`train.digits.score_vae` of a state: its reconstructions of `test` (from the mean code) and
  `num_samples` prior samples drawn with `key(seed)`, labelled by the digit classifier."""
  batch = test.gather(np.arange(len(test)))
  return digits.score_vae(
    classifier,
    *coders(model, state),
    batch["image"],
    batch["label"],
    key=jax.random.key(seed),
    num_samples=num_samples,
  )


def train(config: Config) -> TrainState:
  """Runs (or resumes) one training run; returns the final state."""
  config = resolve(config)
  config_lib.start(config)
  dataset = data.load(
    config.dataset, image_size=config.image_size, channels=config.channels, seed=config.seed
  )
  steps_per_epoch = data.steps_per_epoch(dataset.train, batch_size=config.batch_size)
  model, tx, state = create(config, steps_per_epoch)
  loss = perceptual.LOSSES[config.loss]
  loss_params = loss.params(config.channels)
  if config.loss_params:
    loss_params = twoafc.load_params(config.loss_params, like=loss_params)
  consts = {
    "loss": loss_params,
    "metrics": metric_params(config.channels) if config.test_metrics else {},
  }
  train_step, eval_step = make_steps(
    model,
    tx,
    loss,
    config.loss_weight,
    l2_steps=l2_phase_steps(config, steps_per_epoch),
    l2_scale=config.l2_scale,
  )

  def on_epoch_end(state, epoch):
    save_pictures(model, state, dataset.test, config.workdir, seed=config.seed)

  state = loop.fit(
    state,
    train_step,
    eval_step,
    dataset,
    loop.settings_from(config),
    consts=consts,
    on_epoch_end=on_epoch_end,
    max_steps=config.max_steps,
  )
  if config.test_metrics and digits.applies(dataset) and jax.process_index() == 0:
    n = min(len(dataset.test), config.eval_examples or len(dataset.test))
    # Spread over the split, not its head: mnist_embedded's test split is in label order.
    test = data.subset(dataset.test, np.arange(n) * len(dataset.test) // n)
    scores = digit_scores(model, state, test, digits.classifier(dataset), seed=config.seed)
    final = {f"final_digits_{k}": v for k, v in scores.items()}
    metrics.write_final(config.workdir, {"step": int(state.step), **final})
    print(f"digit classifier (train.digits) of the final state: {scores}")
  if jax.process_index() == 0:
    print(
      f"outputs in {os.path.abspath(config.workdir)}: config.json, metrics.jsonl, "
      "checkpoints/, reconstructions.png, samples.png, interpolations.png"
      + (", manifold.png" if config.latent == 2 else "")
    )
  return state


if __name__ == "__main__":
  config_lib.run(Config, train)
