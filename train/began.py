"""Train BEGAN (Berthelot et al. 2017) with Vertolli & Davies' multi-distance energy (Eq. 6).

    python -m train.began                                   # l1 only: the original BEGAN
    python -m train.began --beta_l1=1 --beta_gmsm=1 --beta_chroma=1 --gamma=0.5 --image_size=64
    python -m train.began --config=began_gmsm_chrom_g0.7_128 --dataset=tfds:celeb_a
    python -m train.began --dataset=fashion_mnist_debian --channels=3 --image_size=32

The energy `L(v) = d(v, D(v))`, `d = sum_d beta_d d / sum_d beta_d` over l1, 1 - GMSM and
1 - chroma (`perceptual.multi_distance`); `L_D = L(x) - k_t L(G(z))`, `L_G = L(G(z))`,
`k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1)`, `M_global = L(x) + |gamma L(x) -
L(G(z))|`. Adam (beta1 0.5) for each network, learning rates halved every `halve_every` steps.

Presets (`--config`): Vertolli's Table 1 (12 models) was not available to us, so the presets are
the cross product of the loss weightings in their code (`models.began.VERTOLLI_LOSS_WEIGHTS`),
gamma in {0.5, 0.7} and 64 or 128 pixels (Nz = Nh = 128 or 256), named
`<weights>_g<gamma>_<size>`. Explicit flags override a preset.

Grey data: the chroma term needs RGB; with `--channels=1` and `--beta_chroma > 0` the run stops
with an error. `--channels=3` repeats grey into RGB, for which the chroma term penalises colour
that D adds (real images have I = Q = 0).

The workdir gets config.json, metrics.jsonl (every logged step has real_/fake_ l1, gmsm, chroma
distances, k, m_global), checkpoints/ and samples.png, reconstructions.png, interpolations.png,
similarity_maps.png (originals, D(x), GMS map, chroma map), m_global.png, distances.md.
"""

import dataclasses
import itertools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import perceptual
from models import began as began_models
from train import began_report, data, images, loop, metrics
from train import config as config_lib

PRESETS = {
  f"{name}_g{gamma}_{size}": {
    **{f"beta_{d}": beta for d, beta in weights.items()},
    "gamma": gamma,
    "image_size": size,
    "hidden_size": 2 * size,
  }
  for (name, weights), gamma, size in itertools.product(
    began_models.VERTOLLI_LOSS_WEIGHTS.items(), (0.5, 0.7), (64, 128)
  )
}
DEFAULTS = dict(beta_l1=1.0, beta_gmsm=0.0, beta_chroma=0.0, gamma=0.5, image_size=64)


@dataclasses.dataclass(frozen=True)
class Config(config_lib.Loop):
  config: str = config_lib.choice("", ("", *PRESETS), "a preset; explicit flags override it")
  beta_l1: float | None = config_lib.documented(None, "weight of l1 (default 1)")
  beta_gmsm: float | None = config_lib.documented(None, "weight of 1 - GMSM (default 0)")
  beta_chroma: float | None = config_lib.documented(None, "weight of 1 - chroma (default 0)")
  gamma: float | None = config_lib.documented(None, "diversity ratio (default 0.5)")
  image_size: int | None = config_lib.documented(None, "8 * 2^k pixels (default 64)")
  hidden_size: int | None = config_lib.documented(None, "Nz = Nh (default 2 * image_size)")
  num_filters: int = config_lib.documented(128, "n, filters of the first stage")
  lambda_k: float = began_models.LAMBDA_K
  dataset: str = config_lib.documented("skimage_patches", f"{sorted(data.DATASETS)} or tfds:<name>")
  channels: int = 3
  learning_rate: float = 8e-5
  generator_learning_rate: float | None = config_lib.documented(None, "default learning_rate")
  beta1: float = 0.5
  halve_every: int = config_lib.documented(100_000, "steps between learning-rate halvings")
  epochs: int = 10
  batch_size: int = 16
  eval_batch_size: int = 64
  eval_examples: int | None = config_lib.documented(
    None, "score only the first N test images at each evaluation (quick runs); default all"
  )
  workdir: str = config_lib.documented("", "default runs/began_<config or weights>")
  checkpoint_every: int = 1000


def resolve(config: Config) -> Config:
  """Fills unset fields from the preset, then the defaults; checks the chroma term's channels."""
  filled = {**DEFAULTS, **PRESETS.get(config.config, {})}
  filled = {k: v for k, v in filled.items() if getattr(config, k) is None}
  config = dataclasses.replace(config, **filled)
  if config.hidden_size is None:
    config = dataclasses.replace(config, hidden_size=2 * config.image_size)
  if config.channels != 3 and config.beta_chroma > 0:
    raise ValueError(
      f"--beta_chroma={config.beta_chroma} compares chrominance, which grey images "
      "(--channels=1) lack. Pass --channels=3 (grey repeated into RGB) or --beta_chroma=0."
    )
  if not config.workdir:
    label = config.config or "_".join(f"{d}{w:g}" for d, w in weights(config).items())
    config = dataclasses.replace(config, workdir=os.path.join("runs", f"began_{label}"))
  return config


def weights(config: Config) -> dict[str, float]:
  """The positive beta_d of a resolved config, by registry name."""
  betas = {"l1": config.beta_l1, "gmsm": config.beta_gmsm, "chroma": config.beta_chroma}
  return {name: beta for name, beta in betas.items() if beta > 0}


def components(channels: int) -> dict[str, perceptual.Loss]:
  """The registry losses logged per distance (Table 2) that exist and take `channels`."""
  return {
    name: perceptual.LOSSES[name]
    for name in began_report.DISTANCES
    if name in perceptual.LOSSES and channels in perceptual.LOSSES[name].channels
  }


class BeganState(NamedTuple):
  step: jax.Array
  g_params: Any
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any
  k: jax.Array  # k_t, a float32 scalar in [0, 1]


def make_steps(networks, txs, distance: perceptual.Loss, parts, *, gamma, lambda_k, latent):
  """The pure train and eval steps.

  consts = {"distance": params of `distance`, "components": {name: params}} (the Table 2 logs).
  """
  gen, disc = networks
  g_tx, d_tx = txs

  def energies(g_params, d_params, x, z, consts, *, train=True):
    """Per-image `L(x)`, `L(G(z))` from one D pass over real and fake; aux: images.

    Evaluation (`train=False`) scores with `distance.per_image`.
    """
    fake = gen.apply(g_params, z)
    recon_real, recon_fake = jnp.split(disc.apply(d_params, jnp.concatenate([x, fake])), 2)
    d = distance if train else distance.per_image
    loss = lambda v, r: began_models.autoencoder_loss(  # noqa: E731
      v, r, distance=lambda a, b: d(a, b, params=consts["distance"])
    )
    return (loss(x, recon_real), loss(fake, recon_fake)), (fake, recon_real, recon_fake)

  def logged(x, fake, recon_real, recon_fake, consts):
    """Every Table 2 distance of D's reconstructions, batch means (no gradient)."""
    out = {}
    for name, part in parts.items():
      p = consts["components"][name]
      out[f"real_{name}"] = jnp.mean(part(x, recon_real, params=p))
      out[f"fake_{name}"] = jnp.mean(part(fake, recon_fake, params=p))
    return jax.lax.stop_gradient(out)

  def train_step(state: BeganState, batch, key, consts):
    x = batch["image"]
    z = began_models.sample_latent(key, x.shape[0], latent)

    def batch_means(g_params, d_params):
      (real, fake), aux = energies(g_params, d_params, x, z, consts)
      return (jnp.mean(real), jnp.mean(fake)), aux

    (l_real, l_fake), pullback, aux = jax.vjp(
      batch_means, state.g_params, state.d_params, has_aux=True
    )
    # One forward pass, two cotangents: L_D = L(x) - k_t L(G(z)) differentiated w.r.t. D only
    # (G(z) held fixed), L_G = L(G(z)) w.r.t. G only (D held fixed), as in Berthelot et al.
    one, k = jnp.ones_like(l_real), state.k
    _, d_grads = pullback((one, -k * one))
    g_grads, _ = pullback((jnp.zeros_like(one), one))
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
    d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
    new_k = began_models.update_k(k, l_real, l_fake, gamma=gamma, lambda_k=lambda_k)
    metrics = {
      "loss_real": l_real,
      "loss_fake": l_fake,
      "d_loss": began_models.discriminator_loss(l_real, l_fake, k),
      "g_loss": began_models.generator_loss(l_fake),
      "k": new_k,
      "m_global": began_models.convergence_measure(l_real, l_fake, gamma=gamma),
      **logged(x, *aux, consts),
    }
    state = BeganState(
      state.step + 1,
      optax.apply_updates(state.g_params, g_updates),
      optax.apply_updates(state.d_params, d_updates),
      g_opt_state,
      d_opt_state,
      new_k,
    )
    return state, metrics

  def eval_step(state: BeganState, batch, consts):
    """Per image: `loss` = L(x) + |gamma L(x) - L(G(z))|, the two energies and the real images'
    Table 2 distances. Each image's z is drawn from its index in the split (fixed, and the same
    whatever batch the image is evaluated in)."""
    x = batch["image"]
    sample = lambda key: began_models.sample_latent(key, 1, latent)[0]  # noqa: E731
    z = jax.vmap(sample)(loop.example_keys(batch["index"]))
    (real, fake), (_, recon_real, _) = energies(
      state.g_params, state.d_params, x, z, consts, train=False
    )
    values = {
      "loss": began_models.convergence_measure(real, fake, gamma=gamma),
      "loss_real": real,
      "loss_fake": fake,
    }
    for name, part in parts.items():
      values[f"real_{name}"] = part.per_image(x, recon_real, params=consts["components"][name])
    return values

  return train_step, eval_step


def save_pictures(networks, state, test: data.Split, config: Config) -> dict[str, str]:
  """Samples, reconstructions, interpolations, similarity maps, M_global curve, distance table."""
  gen, disc = networks
  g_params, d_params = jax.device_get((state.g_params, state.d_params))
  generate = lambda p, z: jnp.clip(loop.apply(gen, p, z), 0.0, 1.0)  # noqa: E731
  z = began_models.sample_latent(jax.random.key(config.seed), 64, config.hidden_size)
  x = test.gather(np.linspace(0, len(test) - 1, 16).astype(int))["image"]
  recon = np.asarray(loop.apply(disc, d_params, x))
  t = np.linspace(0.0, 1.0, 10)[None, :, None]
  path = lambda name: os.path.join(config.workdir, name)  # noqa: E731
  paths = {
    "samples": images.save_grid(path("samples.png"), np.asarray(generate(g_params, z)), columns=8),
    "reconstructions": images.save_grid(
      path("reconstructions.png"),
      images.side_by_side(x, np.clip(recon, 0.0, 1.0), columns=8),
      columns=8,
    ),
    "interpolations": images.save_grid(
      path("interpolations.png"),
      np.asarray(generate(g_params, (z[:8, None] * (1 - t) + z[8:16, None] * t).reshape(80, -1))),
      columns=10,
    ),
    "similarity_maps": began_report.save_similarity_maps(path("similarity_maps.png"), x, recon),
  }
  lines = metrics.read_lines(config.workdir)
  paths["m_global"] = began_report.plot_convergence(lines, path("m_global.png"))
  paths.update(
    metrics.write_table([began_report.distance_table(lines)], config.workdir, "distances")
  )
  return paths


def create(
  config: Config, steps_per_epoch: int | None = None, *, image_mean: tuple[float, ...] | None = None
):
  """The networks, optimizers and initial state of a resolved config.

  `image_mean`: the training images' per-channel mean (`data.channel_mean(dataset.train)`), where
  the outputs of G and of D's decoder start; None starts them at 0 (black).
  """
  del steps_per_epoch  # the schedule counts steps
  size, channels = config.image_size, config.channels
  gen = began_models.Generator(size, channels, config.num_filters, image_mean)
  disc = began_models.Discriminator(
    size, channels, config.num_filters, config.hidden_size, image_mean
  )
  txs = tuple(
    optax.adam(optax.exponential_decay(lr, config.halve_every, 0.5, staircase=True), config.beta1)
    for lr in (config.generator_learning_rate or config.learning_rate, config.learning_rate)
  )
  key_g, key_d = jax.random.split(jax.random.key(config.seed))
  g_params = jax.jit(gen.init)(key_g, jnp.zeros((1, config.hidden_size)))
  d_params = jax.jit(disc.init)(key_d, jnp.zeros((1, size, size, channels)))
  state = BeganState(
    jnp.zeros((), jnp.int32),
    g_params,
    d_params,
    txs[0].init(g_params),
    txs[1].init(d_params),
    jnp.zeros((), jnp.float32),
  )
  return (gen, disc), txs, state


def train(config: Config) -> BeganState:
  """Runs (or resumes) one training run; returns the final state."""
  config = resolve(config)
  config_lib.start(config)
  dataset = data.load(
    config.dataset, image_size=config.image_size, channels=config.channels, seed=config.seed
  )
  networks, txs, state = create(config, image_mean=data.channel_mean(dataset.train))
  distance = perceptual.multi_distance(weights(config))
  parts = components(config.channels)
  consts = {
    "distance": distance.params(config.channels),
    "components": {name: loss.params(config.channels) for name, loss in parts.items()},
  }
  train_step, eval_step = make_steps(
    networks,
    txs,
    distance,
    parts,
    gamma=config.gamma,
    lambda_k=config.lambda_k,
    latent=config.hidden_size,
  )

  def on_epoch_end(state, epoch):
    save_pictures(networks, state, dataset.test, config)

  return loop.fit(
    state,
    train_step,
    eval_step,
    dataset,
    loop.settings_from(config),
    consts=consts,
    on_epoch_end=on_epoch_end,
    max_steps=config.max_steps,
  )


if __name__ == "__main__":
  config_lib.run(Config, train)
