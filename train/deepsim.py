"""Train DeePSiM (Dosovitskiy & Brox 2016): feature inversion or a VAE with a deep-feature loss.

    python -m train.deepsim --task=inversion                  # invert AlexNet conv5 of 64x64 crops
    python -m train.deepsim --task=inversion --input_layer=pool5 --noadv     # Fig. 1 ablation
    python -m train.deepsim --task=vae --random_comparator
    python -m train.deepsim --dataset=tfds:imagenet2012 --task=inversion     # when prepared

Generator loss `lambda_feat L_feat + lambda_adv L_adv + lambda_img L_img (+ lambda_kl KL)`, batch
means; `--nofeat`, `--noadv`, `--noimg` drop a term. The discriminator is skipped while
`L_discr / L_adv < discriminator_ratio` (logged as `d_updated`). Adam for both networks.

Scale of the weights. The paper's defaults (0.01, 100, 2e-6 at conv5) are sums of squares in
Caffe's units: pixels in [0, 255] and CaffeNet fed `255 x - mean`. Ours are images in [0, 1] and
torchvision AlexNet fed `(x - mean) / std`, and `perceptual.deepsim_feature_loss` is the SUM of
squared conv5 differences of that network. So L_img is computed on `image_scale * x` (255) and
L_feat on `feature_scale * C(x)` (255 * 0.226, the ImageNet std, the ratio of the two input
scalings; ReLU features scale with the input up to the biases), which puts our terms in the
paper's units; `--feature_scale=1 --image_scale=1` uses our definitions as they are. At 64x64 the
sums run over ~13x fewer pixels and ~19x fewer conv5 features than at 227x227, so L_adv weighs
relatively more than in the paper.

The workdir gets config.json, metrics.jsonl, checkpoints/, evaluation.json (normalised errors)
and PNGs: reconstructions, reencoding, interpolations (and samples for the VAE).
"""

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from models import deepsim as models
from perceptual import deep, pretrained
from train import config as config_lib
from train import data, deepsim_report, loop

TERMS = ("feat", "adv", "img")


@dataclasses.dataclass(frozen=True)
class Config(config_lib.Loop):
  task: str = config_lib.choice("inversion", ("inversion", "vae"), "inversion | vae")
  input_layer: str = config_lib.choice("conv5", models.INPUT_LAYERS, "features inverted")
  comparator_layer: str = config_lib.choice("conv5", deep.ALEX_LAYERS, "AlexNet layer of L_feat")
  random_comparator: bool = config_lib.documented(False, "random AlexNet comparator (ablation)")
  feat: bool = config_lib.documented(True, "use L_feat (--nofeat drops it)")
  adv: bool = config_lib.documented(True, "use L_adv and train D (--noadv drops it)")
  img: bool = config_lib.documented(True, "use L_img (--noimg drops it)")
  lambda_feat: float = 0.01
  lambda_adv: float = 100.0
  lambda_img: float = 2e-6
  lambda_kl: float = 20.0
  feature_scale: float = config_lib.documented(255 * 0.226, "comparator features x this")
  image_scale: float = config_lib.documented(255.0, "pixels x this in L_img")
  discriminator_ratio: float = config_lib.documented(0.1, "skip D while L_discr/L_adv is below")
  condition_discriminator: bool = config_lib.documented(True, "D also sees the input features")
  latent: int = config_lib.documented(128, "VAE latent dimensions")
  width: int = config_lib.documented(32, "filters of the networks' widest-resolution stage")
  hidden: int = config_lib.documented(512, "units of the fully connected layers")
  dataset: str = config_lib.documented("skimage_patches", f"{sorted(data.DATASETS)} or tfds:<name>")
  num_train: int = config_lib.documented(8192, "skimage_patches training crops")
  num_test: int = config_lib.documented(1024, "skimage_patches test crops")
  image_size: int = 64
  channels: int = 3
  learning_rate: float = 2e-4
  beta1: float = 0.9
  beta2: float = 0.999
  epochs: int = 10
  batch_size: int = 64
  eval_batch_size: int = 128
  eval_examples: int | None = config_lib.documented(
    None, "score only the first N test images at each evaluation (quick runs); default all"
  )
  workdir: str = config_lib.documented("", "default runs/deepsim_<task>")
  log_every: int = 10


def resolve(config: Config) -> Config:
  """Fills the default workdir."""
  if config.workdir:
    return config
  return dataclasses.replace(config, workdir=os.path.join("runs", f"deepsim_{config.task}"))


class DeepsimState(NamedTuple):
  step: jax.Array
  g_params: Any  # {"generator": ..., "encoder": ...} (the encoder only for the VAE)
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any


def make_consts(config: Config) -> dict[str, Any]:
  """Jit arguments: the fixed AlexNet (inverted features), the comparator, lambdas, D's ratio."""
  alexnet = pretrained.lpips_params(net="alex")["backbone"]
  comparator = (
    deep.alexnet_random_params(jax.random.key(config.seed + 1))
    if config.random_comparator
    else alexnet
  )
  lambdas = {name: getattr(config, f"lambda_{name}") for name in (*TERMS, "kl")}
  return {
    "alexnet": alexnet,
    "comparator": comparator,
    "lambdas": lambdas,
    "discriminator_ratio": config.discriminator_ratio,
  }


def make_steps(networks, txs, config: Config):
  """The pure train and eval steps; consts from `make_consts`."""
  gen, disc, enc = networks
  g_tx, d_tx = txs
  active = tuple(t for t in TERMS if getattr(config, t))
  if not active:
    raise ValueError("--nofeat --noadv --noimg drops every term; keep at least one.")
  vae = config.task == "vae"

  def condition(x, consts):
    if vae or not config.condition_discriminator:
      return None
    return models.input_features(consts["alexnet"], x, layer=config.input_layer)

  def reconstruct(g_params, x, consts, key):
    """Reconstruction `[B, H, W, C]` and per-image KL (zeros for inversion)."""
    if not vae:
      code = models.input_features(consts["alexnet"], x, layer=config.input_layer)
      return gen.apply(g_params["generator"], code), jnp.zeros(x.shape[0])
    mu, log_sigma = enc.apply(g_params["encoder"], x)
    z = mu if key is None else models.sample(key, mu, log_sigma)
    return gen.apply(g_params["generator"], z), models.kl_divergence(mu, log_sigma)

  def reconstruction_terms(x, recon, kl, consts):
    """Per-image L_feat, L_img (paper units) and KL."""
    terms = {"kl": kl} if vae else {}
    if "feat" in active:
      s = config.feature_scale**2
      fx = deep.deepsim_feature_loss(
        x, recon, layer=config.comparator_layer, params=consts["comparator"]
      )
      terms["feat"] = s * fx
    if "img" in active:
      terms["img"] = config.image_scale**2 * jnp.sum(jnp.square(recon - x), axis=(1, 2, 3))
    return terms

  def train_step(state: DeepsimState, batch, key, consts):
    x = batch["image"]
    key_z, key_g, key_d = jax.random.split(key, 3)
    cond = jax.lax.stop_gradient(condition(x, consts))

    def g_objective(g_params):
      recon, kl = reconstruct(g_params, x, consts, key_z)
      terms = reconstruction_terms(x, recon, kl, consts)
      if "adv" in active:
        logits = disc.apply(state.d_params, recon, cond, train=True, rngs={"dropout": key_g})
        terms["adv"] = models.adversarial_loss(logits)
      terms = {k: jnp.mean(v) for k, v in terms.items()}
      total = sum(consts["lambdas"][k] * v for k, v in terms.items())
      return total, (terms, recon)

    (total, (terms, recon)), g_grads = jax.value_and_grad(g_objective, has_aux=True)(state.g_params)
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
    metrics = {"g_loss": total, **{f"l_{k}": v for k, v in terms.items()}}
    d_params, d_opt_state = state.d_params, state.d_opt_state
    if "adv" in active:
      fake = jax.lax.stop_gradient(recon)
      both_cond = None if cond is None else jnp.concatenate([cond, cond])

      def d_objective(d_params):
        logits = disc.apply(
          d_params, jnp.concatenate([x, fake]), both_cond, train=True, rngs={"dropout": key_d}
        )
        real, fake_logits = jnp.split(logits, 2)
        return jnp.mean(models.discriminator_loss(real, fake_logits))

      l_discr, d_grads = jax.value_and_grad(d_objective)(state.d_params)
      d_updates, new_d_opt = d_tx.update(d_grads, state.d_opt_state, state.d_params)
      update = models.discriminator_updates(
        l_discr, terms["adv"], ratio=consts["discriminator_ratio"]
      )
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(update, a, b), new, old)  # noqa: E731
      d_params = keep(optax.apply_updates(state.d_params, d_updates), state.d_params)
      d_opt_state = keep(new_d_opt, state.d_opt_state)
      metrics.update(l_discr=l_discr, d_updated=update.astype(jnp.float32))
    new_state = DeepsimState(
      state.step + 1,
      optax.apply_updates(state.g_params, g_updates),
      d_params,
      g_opt_state,
      d_opt_state,
    )
    return new_state, metrics

  def eval_step(state: DeepsimState, batch, consts):
    """Per image (z = mu): loss = weighted L_feat + L_img (+ KL), the terms, and psnr."""
    x = batch["image"]
    recon, kl = reconstruct(state.g_params, x, consts, None)
    terms = reconstruction_terms(x, recon, kl, consts)
    loss = sum(consts["lambdas"][k] * v for k, v in terms.items()) if terms else 0.0 * kl
    mse = jnp.mean(jnp.square(jnp.clip(recon, 0, 1) - x), axis=(1, 2, 3))
    return {"loss": loss, **terms, "psnr": -10 * jnp.log10(jnp.maximum(mse, 1e-10))}

  return train_step, eval_step


def create(
  config: Config, steps_per_epoch: int | None = None, *, image_mean: tuple[float, ...] | None = None
):
  """The networks (generator, discriminator, encoder), the two optimizers and the state.

  `image_mean`: the training images' per-channel mean, where the generator's output starts
  (`data.channel_mean(dataset.train)`); None starts it at 0.
  """
  del steps_per_epoch  # constant learning rate
  gen = models.Generator(
    config.image_size, config.channels, config.width, config.hidden, output_mean=image_mean
  )
  disc = models.Discriminator(config.width, config.hidden // 2)
  enc = models.Encoder(config.latent, config.width)
  txs = tuple(optax.adam(config.learning_rate, config.beta1, config.beta2) for _ in range(2))
  k_gen, k_disc, k_enc = jax.random.split(jax.random.key(config.seed), 3)
  x = jnp.zeros((1, config.image_size, config.image_size, config.channels))
  code_shape = models.input_shape(config.input_layer, config.image_size)
  if config.task == "vae":
    code_shape = (config.latent,)
  g_params = {"generator": jax.jit(gen.init)(k_gen, jnp.zeros((1, *code_shape)))}
  if config.task == "vae":
    g_params["encoder"] = jax.jit(enc.init)(k_enc, x)
  cond = None
  if config.task == "inversion" and config.condition_discriminator:
    cond = jnp.zeros((1, *code_shape))
  d_params = jax.jit(disc.init)(k_disc, x, cond)
  state = DeepsimState(
    jnp.zeros((), jnp.int32), g_params, d_params, txs[0].init(g_params), txs[1].init(d_params)
  )
  return (gen, disc, enc), txs, state


def train(config: Config) -> DeepsimState:
  """Runs (or resumes) one training run; returns the final state."""
  config = resolve(config)
  config_lib.start(config)
  sizes = {"num_train": config.num_train, "num_test": config.num_test}
  dataset = data.load(
    config.dataset,
    image_size=config.image_size,
    channels=config.channels,
    seed=config.seed,
    **(sizes if config.dataset == "skimage_patches" else {}),
  )
  networks, txs, state = create(config, image_mean=data.channel_mean(dataset.train))
  consts = make_consts(config)
  train_step, eval_step = make_steps(networks, txs, config)

  def on_epoch_end(state, epoch):
    deepsim_report.report(networks, state, consts, dataset.test, config)

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
  return state


if __name__ == "__main__":
  config_lib.run(Config, train)
