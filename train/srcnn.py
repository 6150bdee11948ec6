"""Train SRCNN (x4 super-resolution of the Y channel) with any loss of `perceptual.LOSSES`.

    python -m train.srcnn --loss=ms_ssim                   # or mse | mae | ssim | any registry name
    python -m train.srcnn --loss=mse --arch=srcnn915 --epochs=3

Data: the luma (ITU-R 601-2 Y) of scikit-image's astronaut, coffee, rocket and motorcycle photos,
each `modcrop`ped and bicubic-degraded x4 as a whole (`train.superres`), both stored as 8-bit;
training pairs are random aligned 33x33 crops (Dong et al.); validation crops and the final test
come from chelsea, never trained on. Adam (our choice: Dong et al.'s SGD needs ~1e8 updates).
The workdir gets config.json, metrics.jsonl (last line: `final_*` PSNR / SSIM of bicubic and
SRCNN on the whole chelsea image, `scale` border pixels shaved) and chelsea.png (bicubic | SRCNN |
ground truth). `eval.srcnn` tabulates several trained workdirs.

MS-SSIM on 33 px crops: the default 5 scales of 11-tap windows need 161 px, so `--loss=ms_ssim`
is the registry's `ms_ssim_snell`: 3 scales (33 -> 17 -> 9 px), 7-tap Gaussian windows (sigma 1.5)
with "VALID" filtering (needs 25 px), equal exponents 1/3 (Snell et al. weight scales equally).
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import perceptual
from models import srcnn as srcnn_models
from perceptual import structural
from train import config as config_lib
from train import data, datasets, images, loop, metrics, superres

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "motorcycle")
TEST_PHOTO = "chelsea"
ALIASES = {"mse": "l2", "mae": "l1", "ms_ssim": "ms_ssim_snell"}


@dataclasses.dataclass(frozen=True)
class Config(config_lib.Loop):
  loss: str = config_lib.choice(
    "mse", {*perceptual.LOSSES, *ALIASES}, "mse | mae | ms_ssim | a registry name"
  )
  arch: str = config_lib.choice("srcnn955", srcnn_models.ARCHS, "models.srcnn.ARCHS")
  scale: int = 4
  crop: int = 33
  num_train: int = config_lib.documented(16384, "random training crops")
  num_test: int = config_lib.documented(512, "validation crops of the held-out photo")
  epochs: int = 5
  batch_size: int = 64
  eval_batch_size: int = 256
  eval_examples: int | None = config_lib.documented(
    None, "score only the first N test images at each evaluation (quick runs); default all"
  )
  learning_rate: float = 1e-3
  workdir: str = config_lib.documented("", "default runs/srcnn_<arch>_<loss>")


def make_loss(name: str) -> perceptual.Loss:
  """The registry loss `name` (aliases: mse, mae, and ms_ssim for Snell et al.'s 33 px MS-SSIM)."""
  return perceptual.LOSSES[ALIASES.get(name, name)]


@functools.cache
def photo_pair(name: str, *, scale: int) -> np.ndarray:
  """uint8 `[H, W, 2]`: the bicubic-degraded Y and the true Y of a scikit-image photo (modcropped
  to a multiple of `scale`; the Y is rounded to 8 bits before degrading, as from a stored image)."""
  photo = datasets.photo(name)
  photo = photo[..., None] if photo.ndim == 2 else photo  # grey photos (camera, coins)
  y = data.preprocess(photo[None], image_size=None, channels=1)
  y = superres.modcrop(np.round(y * 255) / 255, scale=scale)
  low = superres.bicubic_degrade(jnp.asarray(y), scale=scale)
  pair = np.concatenate([np.asarray(low), y], axis=-1)[0]
  return np.round(pair * 255).astype(np.uint8)


def _crops(names, *, scale: int, size: int, count: int, seed: int) -> datasets.PatchSource:
  photos = tuple(photo_pair(n, scale=scale) for n in names)
  rng = np.random.default_rng(seed)
  areas = np.array([(p.shape[0] - size + 1) * (p.shape[1] - size + 1) for p in photos])
  photo = rng.choice(len(photos), size=count, p=areas / areas.sum())
  rows = rng.integers(0, np.array([p.shape[0] - size + 1 for p in photos])[photo])
  cols = rng.integers(0, np.array([p.shape[1] - size + 1 for p in photos])[photo])
  return datasets.PatchSource(photos, np.stack([photo, rows, cols], axis=1), size)


def load_data(config: Config) -> data.Dataset:
  """Crops whose channel 0 is the bicubic input and channel 1 the target, in [0, 1]."""
  train = _crops(
    TRAIN_PHOTOS, scale=config.scale, size=config.crop, count=config.num_train, seed=config.seed
  )
  test = _crops((TEST_PHOTO,), scale=config.scale, size=config.crop, count=config.num_test, seed=1)
  return data.Dataset(
    "sr_pairs", data.Split(train, None), data.Split(test, None), (config.crop,) * 2 + (2,), None
  )


def make_steps(model, tx: optax.GradientTransformation, loss: perceptual.Loss):
  """Pure steps on batches of stacked (bicubic, target) crops; consts = the loss params."""

  def split(batch):
    x = batch["image"]
    target = superres.shave(x[..., 1:], border=model.border)
    return x[..., :1], target

  def train_step(state: loop.TrainState, batch, key, consts):
    inputs, target = split(batch)

    def objective(params):
      restored = model.apply({"params": params}, inputs)
      return loss(target, restored, params=consts, key=key if loss.uses_key else None).mean()

    value, grads = jax.value_and_grad(objective)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return loop.TrainState(state.step + 1, params, opt_state), {"loss": value}

  def eval_step(state: loop.TrainState, batch, consts):
    inputs, target = split(batch)
    restored = jnp.clip(model.apply({"params": state.params}, inputs), 0.0, 1.0)
    bicubic = superres.shave(inputs, border=model.border)
    return {
      "loss": loss.per_image(target, restored, params=consts),
      "psnr": perceptual.psnr(target, restored),
      "bicubic_psnr": perceptual.psnr(target, bicubic),
    }

  return train_step, eval_step


def create(config: Config):
  """The model, optimizer and initial state of a config."""
  model = srcnn_models.ARCHS[config.arch]()
  tx = optax.adam(config.learning_rate)
  x = np.zeros((1, config.crop, config.crop, 1), np.float32)
  params = model.init(jax.random.key(config.seed), x)["params"]
  return model, tx, loop.TrainState(np.zeros((), np.int32), params, tx.init(params))


def load(workdir: str) -> tuple[Config, Any, loop.TrainState]:
  """The config, model and latest state of a run."""
  return config_lib.load_run(workdir, Config, create)


def super_resolve(model, params, name: str = TEST_PHOTO, *, scale: int = 4) -> dict[str, Any]:
  """Bicubic, SRCNN and true Y of a whole photo, `[1, H, W, 1]` in [0, 1] (shaved, clipped), and
  their PSNR / SSIM (`scale` border pixels shaved, the usual SR convention)."""
  pair = photo_pair(name, scale=scale)[None].astype(np.float32) / 255
  bicubic, truth = pair[..., :1], pair[..., 1:]
  restored = jnp.clip(jax.jit(model.apply)({"params": params}, bicubic), 0.0, 1.0)
  border = max(scale, model.border)
  out = {"bicubic": bicubic, "srcnn": restored, "truth": truth}
  # An SRCNN with "VALID" padding has already lost model.border pixels per side.
  out = {
    k: superres.shave(v, border=border - model.border * (k == "srcnn")) for k, v in out.items()
  }
  for k in ("bicubic", "srcnn"):
    out[f"{k}_psnr"] = float(perceptual.psnr(out["truth"], out[k])[0])
    out[f"{k}_ssim"] = float(structural.ssim(out["truth"], out[k])[0])
  return out


def train(config: Config) -> loop.TrainState:
  """Runs (or resumes) one run, then scores it on the whole held-out photo."""
  if not config.workdir:
    config = dataclasses.replace(
      config, workdir=os.path.join("runs", f"srcnn_{config.arch}_{config.loss}")
    )
  config_lib.start(config)
  model, tx, state = create(config)
  loss = make_loss(config.loss)
  train_step, eval_step = make_steps(model, tx, loss)
  state = loop.fit(
    state,
    train_step,
    eval_step,
    load_data(config),
    loop.settings_from(config),
    consts=loss.params(1),
    max_steps=config.max_steps,
  )
  if jax.process_index() == 0:
    result = super_resolve(model, jax.device_get(state.params), scale=config.scale)
    panels = np.concatenate([result[k] for k in ("bicubic", "srcnn", "truth")], axis=2)
    images.save_png(os.path.join(config.workdir, f"{TEST_PHOTO}.png"), np.asarray(panels[0]))
    scores = {f"final_{k}": v for k, v in result.items() if k.endswith(("_psnr", "_ssim"))}
    metrics.write_final(config.workdir, {"step": int(state.step), **scores})
    print(f"{TEST_PHOTO} x{config.scale}: {scores}; outputs in {config.workdir}")
  return state


if __name__ == "__main__":
  config_lib.run(Config, train)
