"""The loss registry: names written once, read-only, fittable entries, no silent weight loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import perceptual


def test_every_entry_is_registered_under_its_own_name():
  assert all(name == loss.name for name, loss in perceptual.LOSSES.items())
  assert {"l2", "ssim", "ms_ssim", "watson_dft", "lpips_alex"} <= set(perceptual.LOSSES)


def test_the_registry_is_read_only():
  with pytest.raises(TypeError):
    perceptual.LOSSES["mine"] = perceptual.LOSSES["l2"]


def test_fittable_entries_are_the_calibration_metrics():
  fittable = {name for name, loss in perceptual.LOSSES.items() if loss.fit is not None}
  assert fittable == {"watson_dct", "watson_dft", "lpips_alex", "lpips_vgg"}
  fit = perceptual.LOSSES["watson_dft"].fit
  params = fit.initial("paper_2019", 1)
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
  y = jnp.clip(x + 0.1, 0, 1)
  # Its evaluation form is the registry loss's per-image form with the same parameters.
  np.testing.assert_allclose(
    fit.distance(x, y, params, None),
    perceptual.LOSSES["watson_dft"].per_image(x, y, params=params),
    rtol=1e-6,
  )


def test_traced_call_without_params_raises_and_eager_call_loads_them():
  loss = perceptual.LOSSES["watson_dft"]
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
  eager = loss(x, x * 0.9)
  np.testing.assert_allclose(eager, loss(x, x * 0.9, params=loss.params(1)), rtol=1e-6)
  with pytest.raises(ValueError, match="without params inside a traced function"):
    jax.jit(loss)(x, x * 0.9)
  with pytest.raises(ValueError, match="without params inside a traced function"):
    jax.grad(lambda y: loss.per_image(x, y).sum())(x * 0.9)
  jax.jit(perceptual.LOSSES["ssim"])(x, x)  # parameter-free losses need none


def test_snell_ms_ssim_fits_33_px_crops():
  x = jax.random.uniform(jax.random.key(0), (2, 33, 33, 1))
  loss = jax.jit(perceptual.LOSSES["ms_ssim_snell"])
  np.testing.assert_allclose(loss(x, x), 0.0, atol=1e-6)
  assert np.all(np.asarray(loss(x, 1.0 - x)) > 0.5)
