"""Training throughput of the VAEs (Czolbe et al. 2020) with L2 and Watson-DFT: images/s.

    python -m eval.benchmark_training                      # all cores, batch 64 and the defaults
    python -m eval.benchmark_training --threads=1          # one core, as the authors' figures
    python -m eval.benchmark_training --arch=mnist --loss=l2 --batch=64 --steps=30

Each case builds the model with `train.vae.create`, the step with `train.vae.make_steps` and
`train.loop.jit_train_step` on a one-device mesh, compiles it on a fixed random batch (compile
time is reported apart), then times `--steps` steady-state steps (median and best of `--repeats`
blocks). Images/s = batch / (seconds per step). Data loading is excluded: the batch stays on the
device, as it does with the embedded datasets. Watson-DFT's cost over L2 is printed per arch.

Reference (measured on this CPU, the authors' PyTorch models, batch 64, one thread): MNIST VAE
80 img/s (L2) / 75 (Watson-DFT), CelebA VAE 10 img/s. Target: >= 1.5x those, Watson <= +10 %.
"""

import os
import sys


def _set_threads_before_jax(argv: list[str]) -> int | None:
  """`--threads=1` must reach XLA before jax is imported: flags are read once."""
  for arg in argv:
    if arg.startswith("--threads="):
      threads = int(arg.split("=", 1)[1])
      if threads == 1:
        os.environ["XLA_FLAGS"] = (
          os.environ.get("XLA_FLAGS", "")
          + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
      return threads
  return None


_THREADS = _set_threads_before_jax(sys.argv)

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import perceptual  # noqa: E402
from train import loop, sharding, vae  # noqa: E402

PEERS = {("mnist", "l2"): 80.0, ("mnist", "watson_dft"): 75.0, ("celeba", "l2"): 10.0}


def measure(arch: str, loss_name: str, batch: int, *, steps: int, repeats: int) -> dict:
  """Compile time and steady-state seconds per step (wall and process CPU) of one config."""
  config = vae.resolve(vae.Config(arch=arch, loss=loss_name, batch_size=batch, progress=False))
  model, tx, state = vae.create(config, steps_per_epoch=100)
  loss = perceptual.LOSSES[loss_name]
  train_step, _ = vae.make_steps(model, tx, loss, config.loss_weight)
  mesh = sharding.data_mesh(jax.devices()[:1])
  step = loop.jit_train_step(train_step, mesh, seed=0)
  consts = {"loss": loss.params(config.channels), "metrics": {}}
  shape = (batch, config.image_size, config.image_size, config.channels)
  images = jax.random.uniform(jax.random.key(1), shape, jnp.float32)
  batch_data = {"image": jax.device_put(images, sharding.batch_sharding(mesh))}
  t0 = time.perf_counter()
  state, metrics = step(state, batch_data, consts)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  for _ in range(3):  # warm-up: allocator, caches
    state, metrics = step(state, batch_data, consts)
  jax.block_until_ready(metrics)
  walls, cpus = [], []
  for _ in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
      state, metrics = step(state, batch_data, consts)
    jax.block_until_ready((state, metrics))
    walls.append((time.perf_counter() - w0) / steps)
    cpus.append((time.process_time() - c0) / steps)
  if not np.isfinite(float(metrics["loss"])):
    raise RuntimeError(f"{arch}/{loss_name}: the loss is not finite; the timing is meaningless.")
  return dict(
    arch=arch,
    loss=loss_name,
    batch=batch,
    compile_s=compile_s,
    wall_med=float(np.median(walls)),
    wall_min=float(np.min(walls)),
    cpu_med=float(np.median(cpus)),
  )


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--threads", type=int, default=0, help="1: one core (XLA flags, set early)")
  parser.add_argument("--arch", nargs="*", default=["mnist", "celeba"])
  parser.add_argument("--loss", nargs="*", default=["l2", "watson_dft"])
  parser.add_argument(
    "--batch", nargs="*", type=int, default=None, help="default: 64 and the arch's default"
  )
  parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
  parser.add_argument("--repeats", type=int, default=5, help="timed blocks (median and best)")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or '?'}),")
  flags = os.environ.get("XLA_FLAGS", "")
  print(f"  threads: {'1 (XLA_FLAGS=' + flags + ')' if _THREADS == 1 else 'all'}")
  print(f"  os.cpu_count={os.cpu_count()} load average={os.getloadavg()}")
  print("  images/s = batch / s per step; steady state after compile + 3 warm-up steps;")
  print(
    "  img/s cpu = batch / process CPU s per step (with --threads=1 the fair figure under load)"
  )
  header = (
    f"{'arch':7s} {'loss':11s} {'batch':>5s} {'compile s':>9s} {'ms/step':>8s} "
    f"{'img/s med':>9s} {'img/s best':>10s} {'cpu ms':>7s} {'img/s cpu':>9s} {'vs peer':>8s}"
  )
  print(header)
  print("-" * len(header))
  results = []
  for arch in args.arch:
    batches = args.batch or sorted({64, vae.PRESETS[arch]["batch_size"]})
    for batch in batches:
      for loss_name in args.loss:
        r = measure(arch, loss_name, batch, steps=args.steps, repeats=args.repeats)
        results.append(r)
        rate, best = batch / r["wall_med"], batch / r["wall_min"]
        peer = PEERS.get((arch, loss_name)) or PEERS.get((arch, "l2"))
        versus = f"{rate / peer:7.2f}x" if peer and batch == 64 else "       -"
        print(
          f"{arch:7s} {loss_name:11s} {batch:5d} {r['compile_s']:9.1f} {r['wall_med'] * 1e3:8.1f} "
          f"{rate:9.1f} {best:10.1f} {r['cpu_med'] * 1e3:7.1f} {batch / r['cpu_med']:9.1f} "
          f"{versus}",
          flush=True,
        )
  by_key = {(r["arch"], r["batch"], r["loss"]): r for r in results}
  for (arch, batch, loss_name), r in by_key.items():
    base = by_key.get((arch, batch, "l2"))
    if loss_name != "l2" and base:
      extra = r["wall_med"] / base["wall_med"] - 1.0
      extra_best = r["wall_min"] / base["wall_min"] - 1.0
      print(
        f"{arch} batch {batch}: {loss_name} costs {extra:+.0%} over l2 (median; best-of "
        f"{extra_best:+.0%}); target <= +10 %"
      )
  print(
    "peers (authors' PyTorch, batch 64, one thread): "
    + ", ".join(f"{a}/{lo} {v:g} img/s" for (a, lo), v in PEERS.items())
  )


if __name__ == "__main__":
  main(sys.argv[1:])
