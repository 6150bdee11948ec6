"""The programs lowered for GPU and TPU are plain XLA, and compute what the CPU program computes.

CPU-only structure (chunking loops, conditionals as fusion boundaries) is chosen when a program is
lowered (`perceptual.lowering.per_platform`). These tests lower each metric's value and gradient
for "cuda" and "tpu" on this CPU-only machine and read the StableHLO; and they run the program
lowered for "cuda" here (`jax.export` with its platform check disabled: it holds only portable
StableHLO ops) against the CPU program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import perceptual
from perceptual import lowering

# Images large enough to be chunked on CPU (MS-SSIM's five scales need 161 px).
SIZES = {"ms_ssim": 176, "ms_ssim_snell": 176}


def _case_list():
  for name, loss in perceptual.LOSSES.items():
    for channels in loss.channels:
      yield pytest.param(name, channels, id=f"{name}-{channels}")


_CASES = list(_case_list())


def _value_and_grad(name, channels, batch, dtype=jnp.float32):
  loss = perceptual.LOSSES[name]
  try:
    params = loss.params(channels) if loss.load_params else None
  except FileNotFoundError as error:
    pytest.skip(f"{name}: {error}")
  size = SIZES.get(name, 64)
  rng = np.random.default_rng(0)
  x = rng.random((batch, size, size, channels))
  y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
  x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  params = jax.tree.map(
    lambda p: jnp.asarray(p, dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
  )
  f = jax.jit(jax.value_and_grad(lambda y, p: jnp.sum(loss(x, y, params=p))))
  return f, (y, params)


def _hlo(f, args, platform):
  return f.trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("name,channels", _CASES)
def test_accelerator_programs_hold_no_loop_and_no_conditional(name, channels):
  f, args = _value_and_grad(name, channels, batch=16)
  for platform in ("cuda", "tpu"):
    text = _hlo(f, args, platform)
    for op in ("stablehlo.while", "stablehlo.case", "stablehlo.if", "optimization_barrier"):
      assert op not in text, f"{name} lowered for {platform} holds {op}"


def test_the_cpu_program_keeps_its_loops_and_fusion_boundaries():
  # The lowering-time choice is live: the same traced functions lower to chunked programs with
  # conditionals for CPU (what the test above rules out elsewhere).
  for name, channels in (("ssim", 3), ("ms_ssim", 1), ("watson_dft", 3)):
    text = _hlo(*_value_and_grad(name, channels, batch=16), "cpu")
    assert "stablehlo.while" in text and "stablehlo.case" in text, name


@pytest.mark.parametrize(
  "name,channels",
  [
    ("ssim", 3),
    ("ms_ssim", 3),
    ("watson_dft", 1),
    ("watson_dft", 3),
    ("watson_dct", 3),
    ("gmsd", 3),
  ],
)
def test_the_accelerator_program_computes_the_cpu_values_and_gradients(name, channels):
  # In float64, where the two programs' rounding differs by ~1e-12: a wrong unchunked branch fails.
  with jax.enable_x64(True):
    f, args = _value_and_grad(name, channels, batch=16, dtype=jnp.float64)
    exported = export.export(
      f, platforms=("cuda",), disabled_checks=[export.DisabledSafetyCheck.platform()]
    )(*args)
    assert "stablehlo.while" not in exported.mlir_module()
    (value, grad), (value_cpu, grad_cpu) = exported.call(*args), f(*args)
    np.testing.assert_allclose(value, value_cpu, rtol=1e-9)
    np.testing.assert_allclose(
      grad[0], grad_cpu[0], rtol=1e-7, atol=1e-9 * np.abs(grad_cpu[0]).max()
    )


def test_export_for_several_platforms_runs_here():
  f, args = _value_and_grad("ssim", 3, batch=16)
  exported = export.export(f, platforms=("cpu", "cuda", "tpu"))(*args)
  assert exported.platforms == ("cpu", "cuda", "tpu")
  value, grad = exported.call(*args)
  value_jit, grad_jit = f(*args)
  np.testing.assert_allclose(value, value_jit, rtol=1e-6)
  np.testing.assert_allclose(grad[0], grad_jit[0], rtol=1e-5, atol=1e-7)


def test_per_platform_rejects_branches_of_different_shapes():
  with pytest.raises(ValueError, match="different structures or shapes"):
    lowering.per_platform((jnp.ones(3),), cpu=lambda v: v, default=lambda v: v[:2])


def test_per_platform_under_vmap_and_eagerly():
  cpu, default = lambda v, w: (v * w, v.sum()), lambda v, w: (w * v, jnp.sum(v))
  v, w = jnp.arange(6.0).reshape(2, 3), jnp.asarray(2.0)
  eager = lowering.per_platform((v, w), cpu=cpu, default=default)
  mapped = jax.vmap(lambda v: lowering.per_platform((v, w), cpu=cpu, default=default))(v)
  np.testing.assert_allclose(eager[0], v * 2)
  np.testing.assert_allclose(mapped[0], v * 2)
  np.testing.assert_allclose(mapped[1], v.sum(axis=1))
