"""train.vae and the shared loop: smoke + resume, sharding, multiple processes, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import chex
import jax
import numpy as np
import optax
import pytest

import perceptual
from train import checkpoints, data, loop, sharding
from train import vae as vae_train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = dict(progress=False, test_metrics=False, log_every=1, eval_examples=64)


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _params(workdir):
  return jax.device_get(vae_train.load(workdir)[2].params)


@pytest.mark.parametrize(
  "flags",
  [("--arch=mnist", "--batch_size=32"), ("--arch=celeba", "--batch_size=8")],
  ids=["mnist", "celeba"],
)
def test_two_steps_then_resume(flags):
  # A subprocess with one CPU device: the test session's 8 simulated devices would each hold a
  # replica of the CelebA model's 136M parameters and Adam moments.
  with tempfile.TemporaryDirectory() as workdir:
    for steps in (2, 4):
      _run(_train_command(workdir, *flags, f"--max_steps={steps}", "--log_every=1"))
    lines = _jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]
    assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)
    assert [line["step"] for line in lines if "test_loss" in line] == [2, 4]
    for name in ("config.json", "reconstructions.png", "samples.png", "interpolations.png"):
      assert os.path.exists(os.path.join(workdir, name)), name
    assert os.path.exists(os.path.join(workdir, "manifold.png")) == ("--arch=mnist" in flags)
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4]


def test_default_run_logs_every_metric():
  with tempfile.TemporaryDirectory() as workdir:
    vae_train.train(
      vae_train.Config(
        loss="l2", arch="tiny", workdir=workdir, max_steps=1, progress=False, eval_examples=32
      )
    )
    test = [line for line in _jsonl(os.path.join(workdir, "metrics.jsonl")) if "test_loss" in line][
      -1
    ]
    for name in vae_train.metric_params(1):
      assert np.isfinite(test[f"test_{name}"]), name
    assert np.isfinite(test["test_psnr"])


def test_pixel_loss_weight_and_output_follow_the_resolved_channels():
  # lambda of a pixel loss (a mean) is the number of values per image of this run, not of the
  # arch's preset: grey CelebA-architecture runs got 3x the weight and decoded RGB.
  grey = vae_train.resolve(vae_train.Config(loss="l2", arch="celeba", channels=1, workdir="x"))
  assert grey.loss_weight == 64 * 64 * 1
  rgb = vae_train.resolve(vae_train.Config(loss="l1", arch="tiny", channels=3, workdir="x"))
  assert rgb.loss_weight == 32 * 32 * 3
  assert vae_train.resolve(vae_train.Config(loss="l2", arch="celeba")).loss_weight == 64 * 64 * 3
  state = jax.eval_shape(lambda: vae_train.create(grey, steps_per_epoch=1)[2])  # no 136M init
  assert state.params["decoder"]["Conv_4"]["kernel"].shape[-1] == 1
  with pytest.raises(ValueError, match="decodes 64x64 images"):
    vae_train.resolve(vae_train.Config(loss="l2", arch="celeba", image_size=32))


def test_pictures_reuse_compiled_programs():
  # save_pictures runs at every epoch end; a jit built inside it recompiled each time (5 s/epoch).
  config = vae_train.resolve(vae_train.Config(loss="l2", arch="tiny", workdir="unused"))
  dataset = data.load(config.dataset, image_size=32, channels=1, seed=0)
  model, _, state = vae_train.create(config, steps_per_epoch=1)
  compiles = []  # programs traced for compilation

  def record(event, duration, **kwargs):
    if event == "/jax/core/compile/jaxpr_trace_duration":  # traced anew (even on a disk-cache hit)
      compiles.append(duration)

  with tempfile.TemporaryDirectory() as workdir:
    first = vae_train.save_pictures(model, state, dataset.test, workdir, seed=0)
    state = state._replace(params=jax.tree.map(lambda p: p + 1.0, state.params))
    jax.monitoring.register_event_duration_secs_listener(record)
    try:
      assert vae_train.save_pictures(model, state, dataset.test, workdir, seed=0) == first
    finally:
      jax.monitoring.unregister_event_duration_listener(record)
  assert compiles == [], f"the second epoch's pictures traced {len(compiles)} programs"


def test_schedules_short_by_default_and_the_papers_one_flag_away():
  short = vae_train.resolve(vae_train.Config())
  assert (short.epochs, short.learning_rate, short.l2_warmup, short.l2_blend) == (14, 1e-3, 8, 3)
  paper = vae_train.resolve(vae_train.Config(schedule="paper"))
  assert (paper.epochs, paper.learning_rate, paper.l2_warmup, paper.l2_blend) == (250, 1e-4, 0, 0)
  assert paper.eval_every == 1 and paper.loss_weight == short.loss_weight
  assert vae_train.resolve(vae_train.Config(schedule="paper", epochs=3)).epochs == 3
  with pytest.raises(ValueError, match="--schedule=paper is Czolbe"):
    vae_train.resolve(vae_train.Config(schedule="paper", arch="celeba"))


def test_l2_share_holds_then_falls_linearly():
  share = vae_train.l2_share(np.arange(8), 3, 4)
  np.testing.assert_allclose(share, [1, 1, 1, 1, 0.75, 0.5, 0.25, 0])


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_l2_warmup_blends_the_objective(share):
  # At step 2 of (warm-up 1, blend 2) L2 has half the weight, during the warm-up all of it: the
  # gradient is that blend of the L2 and Watson-DFT VAEs' gradients (their KL terms add up to one).
  config = vae_train.resolve(vae_train.Config(loss="watson_dft", arch="tiny", batch_size=8))
  model, _, state = vae_train.create(config, 100)
  sgd = optax.sgd(1.0)  # the update is minus the gradient
  state = state._replace(step=jax.numpy.asarray(2 if share == 0.5 else 0, jax.numpy.int32))
  state = state._replace(opt_state=sgd.init(state.params))
  dataset = data.load(config.dataset, image_size=32, channels=1)
  batch = next(data.batches(dataset.train, batch_size=8, seed=0, epoch=0))
  grads = {}
  for name, loss, weight, l2_steps in [
    ("blend", "watson_dft", config.loss_weight, (1, 2)),
    ("watson_dft", "watson_dft", config.loss_weight, (0, 0)),
    ("l2", "l2", 32.0 * 32.0, (0, 0)),  # the mean over pixels times their number
  ]:
    loss = perceptual.LOSSES[loss]
    step, _ = vae_train.make_steps(model, sgd, loss, weight, l2_steps=l2_steps)
    consts = {"loss": loss.params(1), "metrics": {}}
    new, _ = jax.jit(step)(state, batch, jax.random.key(3), consts)
    grads[name] = jax.tree.map(lambda a, b: a - b, state.params, new.params)
  blend = jax.tree.map(lambda a, b: share * a + (1 - share) * b, grads["l2"], grads["watson_dft"])
  # Per leaf, relative to its norm: a bias gradient sums large per-pixel terms that cancel, so
  # its float32 rounding is set by the terms, not by the (small) sum.
  for got, want, scale in zip(
    *(jax.tree.leaves(t) for t in (grads["blend"], blend, grads["watson_dft"])), strict=True
  ):
    assert np.linalg.norm(got - want) <= 1e-3 * np.linalg.norm(scale) + 1e-6


def test_l2_scaled_to_the_loss_has_its_value_and_l2s_direction():
  config = vae_train.resolve(vae_train.Config(loss="watson_dft", arch="tiny", batch_size=8))
  model, _, state = vae_train.create(config, 100)
  sgd = optax.sgd(1.0)
  state = state._replace(opt_state=sgd.init(state.params))
  dataset = data.load(config.dataset, image_size=32, channels=1)
  batch = next(data.batches(dataset.train, batch_size=8, seed=0, epoch=0))
  consts = {"loss": perceptual.LOSSES["watson_dft"].params(1), "metrics": {}}
  grads = {}
  for scale in ("pixels", "loss"):  # during the warm-up: L2 alone (and the KL term)
    step, _ = vae_train.make_steps(
      model, sgd, perceptual.LOSSES["watson_dft"], config.loss_weight, l2_steps=(5, 5),
      l2_scale=scale,
    )  # fmt: skip
    new, _ = jax.jit(step)(state, batch, jax.random.key(3), consts)
    grads[scale] = jax.tree.map(lambda a, b: a - b, state.params, new.params)
  # The decoder's gradient comes from the reconstruction term alone: "loss" scales it by one
  # factor, lambda * Watson-DFT / squared error of the batch (hundreds here), the same for all.
  ratios = [
    np.linalg.norm(a) / np.linalg.norm(b)
    for a, b in zip(
      *(jax.tree.leaves(grads[s]["decoder"]) for s in ("loss", "pixels")), strict=True
    )
  ]
  assert min(ratios) > 10 and max(ratios) / min(ratios) < 1 + 1e-4
  for a, b in zip(*(jax.tree.leaves(grads[s]["decoder"]) for s in ("loss", "pixels")), strict=True):
    np.testing.assert_allclose(a, b * ratios[0], rtol=1e-3, atol=1e-6 * np.abs(a).max())


def test_the_frozen_encoder_learns_only_while_l2_has_a_share():
  # Warm-up 1 step, blend 1 step (steps_per_epoch=1): L2's share is 1, 1, 0, 0 at steps 0..3.
  config = vae_train.resolve(
    vae_train.Config(
      loss="watson_dft", arch="tiny", batch_size=8, l2_warmup=1, l2_blend=1, freeze_encoder=True
    )
  )
  model, tx, state = vae_train.create(config, 1)
  loss = perceptual.LOSSES["watson_dft"]
  step, _ = vae_train.make_steps(model, tx, loss, config.loss_weight, l2_steps=(1, 1))
  step = jax.jit(step)
  consts = {"loss": loss.params(1), "metrics": {}}
  dataset = data.load(config.dataset, image_size=32, channels=1)
  batch = next(data.batches(dataset.train, batch_size=8, seed=0, epoch=0))

  def changed(old, new, part):
    pairs = zip(jax.tree.leaves(old.params[part]), jax.tree.leaves(new.params[part]), strict=True)
    return any(bool(np.any(a != b)) for a, b in pairs)

  moved = []
  for i in range(4):
    new, _ = step(state, batch, jax.random.key(i), consts)
    moved.append((changed(state, new, "encoder"), changed(state, new, "decoder")))
    state = new
  assert moved == [(True, True), (True, True), (False, True), (False, True)]


def test_the_frozen_encoder_is_the_short_runs_and_needs_l2_epochs():
  assert vae_train.resolve(vae_train.Config()).freeze_encoder
  assert not vae_train.resolve(vae_train.Config(schedule="paper")).freeze_encoder
  assert not vae_train.resolve(vae_train.Config(l2_warmup=0, l2_blend=0)).freeze_encoder
  with pytest.raises(ValueError, match="its encoder would never learn"):
    vae_train.resolve(vae_train.Config(l2_warmup=0, l2_blend=0, freeze_encoder=True))


def test_config_change_on_resume_is_refused():
  with tempfile.TemporaryDirectory() as workdir:
    vae_train.train(vae_train.Config(loss="l2", arch="tiny", workdir=workdir, max_steps=1, **FAST))
    with pytest.raises(ValueError, match="different config.*loss"):
      vae_train.train(
        vae_train.Config(loss="l1", arch="tiny", workdir=workdir, max_steps=2, **FAST)
      )


def test_diverged_run_stops_with_an_error():
  with tempfile.TemporaryDirectory() as workdir:
    config = vae_train.Config(
      loss="l2", arch="tiny", workdir=workdir, max_steps=6, learning_rate=1e30, **FAST
    )
    with pytest.raises(FloatingPointError, match="diverged: .*loss"):
      vae_train.train(config)


def test_sharded_step_equals_single_device():
  config = vae_train.resolve(vae_train.Config(loss="l2", arch="tiny", batch_size=16))
  dataset = data.load(config.dataset, image_size=32, channels=1)
  model, tx, state = vae_train.create(config, 100)
  loss = perceptual.LOSSES["l2"]
  train_step, _ = vae_train.make_steps(model, tx, loss, config.loss_weight)
  consts = {"loss": loss.params(1), "metrics": {}}
  batch = next(data.batches(dataset.train, batch_size=16, seed=0, epoch=0))
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh = sharding.data_mesh(devices)
    step = loop.jit_train_step(train_step, mesh, seed=0)
    s = jax.device_put(jax.device_get(state), sharding.replicated(mesh))  # fresh: the step donates
    for _ in range(2):
      s, _ = step(s, sharding.global_batch(batch, mesh), consts)
    results.append(jax.device_get(s.params))
  assert len(jax.devices()) == 8
  # Same parameters up to float32 reduction order (8 partial sums vs one). Adam divides by
  # sqrt(v), so where a gradient is ~0 that noise becomes ~1e-6 in the parameter (seen in CI:
  # 5 of 32,768 weights); atol 1e-5 is 100x below one Adam step (lr 1e-3), which any wrong
  # sharding (a missing or double-counted shard) changes.
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_corrupt_latest_checkpoint_falls_back_with_warning(caplog):
  with tempfile.TemporaryDirectory() as root:
    kw = dict(loss="l2", arch="tiny", checkpoint_every=5, **FAST)
    ref, run = os.path.join(root, "ref"), os.path.join(root, "run")
    vae_train.train(vae_train.Config(workdir=ref, max_steps=15, **kw))
    vae_train.train(vae_train.Config(workdir=run, max_steps=10, **kw))
    latest = os.path.join(run, "checkpoints", "10")
    for dirpath, _, files in os.walk(latest):  # truncate every data file of the latest step
      for name in files:
        with open(os.path.join(dirpath, name), "r+b") as f:
          f.truncate(max(0, os.path.getsize(f.name) // 3))
    with caplog.at_level("WARNING"):
      vae_train.train(vae_train.Config(workdir=run, max_steps=15, **kw))
    assert "unreadable" in caplog.text
    chex.assert_trees_all_equal(_params(ref), _params(run))


def _train_command(workdir, *extra):
  return [
    sys.executable,
    "-m",
    "train.vae",
    "--loss=l2",
    f"--workdir={workdir}",
    "--progress=false",
    "--test_metrics=false",
    "--eval_examples=64",
    *extra,
  ]


def _run(command):
  result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-4000:]


def _env():
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}


def test_sigkill_then_resume_matches_uninterrupted_run():
  with tempfile.TemporaryDirectory() as root:
    args = ("--arch=mnist", "--batch_size=32", "--max_steps=12", "--checkpoint_every=4")
    ref = subprocess.Popen(
      _train_command(os.path.join(root, "ref"), *args),
      cwd=REPO,
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    run = os.path.join(root, "run")
    victim = subprocess.Popen(
      _train_command(run, *args),
      cwd=REPO,
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    first = os.path.join(run, "checkpoints", "4")
    deadline = time.time() + 300
    while not os.path.exists(first) and time.time() < deadline and victim.poll() is None:
      time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    _run(_train_command(run, *args))
    assert ref.wait() == 0
    steps = [line["step"] for line in _jsonl(os.path.join(run, "metrics.jsonl"))]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) + 1  # + the test line at 12
    chex.assert_trees_all_equal(_params(os.path.join(root, "ref")), _params(run))


def test_two_processes_train_like_one(two_processes_and_one):
  with tempfile.TemporaryDirectory() as root:
    flags = ("--loss=l2", "--arch=tiny", "--batch_size=16", "--max_steps=2", "--progress=false")
    multi, single = two_processes_and_one(
      "train.vae", root, *flags, "--test_metrics=false", "--eval_examples=64"
    )
    # Reduction-order noise, amplified by Adam where a gradient is ~0 (see the sharded-step test):
    # with YNNPACK's dots (train.xla_cpu) 3 of 32,768 weights differed by 2.4e-7 in CI.
    chex.assert_trees_all_close(_params(multi), _params(single), rtol=1e-5, atol=1e-5)


def test_restore_latest_without_checkpoints_returns_target():
  with tempfile.TemporaryDirectory() as workdir:
    mgr = checkpoints.manager(workdir)
    state, step = checkpoints.restore_latest(mgr, {"a": np.zeros(2)})
    assert step is None and state["a"].shape == (2,)


def test_restore_without_checkpoints_raises():
  with (
    tempfile.TemporaryDirectory() as workdir,
    pytest.raises(FileNotFoundError, match="no checkpoint"),
  ):
    checkpoints.restore(workdir, {"a": np.zeros(2)})
