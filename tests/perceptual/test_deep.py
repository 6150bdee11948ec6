"""Tests for perceptual.deep: LPIPS and DeePSiM against the `lpips` package, plus properties.

Golden values: tests/perceptual/golden/deep.json, written by tools/golden/make_deep_golden.py
(lpips 0.1.4 in float64 with torchvision's trunk architectures rebuilt in torch). The VGG tests
skip when the VGG16 weights are not installed (`python -m perceptual.deep fetch`).
"""

import functools
import hashlib
import io
import json
import os
import pathlib
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from perceptual import deep, pretrained

GOLDEN = json.loads(pathlib.Path(__file__).with_name("golden").joinpath("deep.json").read_text())
CASES = GOLDEN["cases"]
needs_vgg = pytest.mark.skipif(
  not deep.weights_available("vgg"),
  reason=f"VGG16 weights not installed: run `{deep.FETCH_COMMAND}` (downloads ~64 MB once)",
)
NETS = ["alex", pytest.param("vgg", marks=needs_vgg)]


def _crop(src, top, left, h, w):
  img = getattr(skimage.data, src)()
  img = img[..., None] if img.ndim == 2 else img
  return np.ascontiguousarray(img[top : top + h, left : left + w])


def _pair(case):
  """The recipe of make_deep_golden.make_pair, checked by the stored sha256 of both images."""
  image, distort = case["image"], case["distort"]
  x = _crop(**image)
  if distort["kind"] == "shift":
    y = _crop(**dict(image, top=image["top"] + distort["dy"], left=image["left"] + distort["dx"]))
  else:
    f = x.astype(np.float64) / 255.0
    if distort["kind"] == "noise":
      f = f + distort["sigma"] * np.random.default_rng(distort["seed"]).standard_normal(f.shape)
    else:
      taps = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
      for _ in range(distort["passes"]):
        for axis in (0, 1):
          pad = [(2, 2) if a == axis else (0, 0) for a in range(3)]
          p, n = np.pad(f, pad, mode="edge"), f.shape[axis]
          f = sum(t * np.take(p, np.arange(i, i + n), axis=axis) for i, t in enumerate(taps))
    y = np.round(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)
  assert hashlib.sha256(x.tobytes()).hexdigest() == case["sha256_x"], case["name"]
  assert hashlib.sha256(y.tobytes()).hexdigest() == case["sha256_y"], case["name"]
  as_float = lambda u8: jnp.asarray(u8.astype(np.float32) / np.float32(255.0))[None]
  return as_float(x), as_float(y)


_params = lambda net: deep.lpips_params(net=net)  # cached: loaded and checksummed once per net

_lpips = jax.jit(deep.lpips, static_argnames="net")
_deepsim = jax.jit(deep.deepsim_feature_loss, static_argnames="layer")


@functools.partial(jax.jit, static_argnames="net")
def _lpips_and_grad(params, x, y, *, net):
  """LPIPS `[B]` and d sum(LPIPS) / dy: images are independent, so row b is image b's gradient."""
  values, vjp = jax.vjp(lambda y: deep.lpips(x, y, net=net, params=params), y)
  return values, vjp(jnp.ones_like(values))[0]


def _stack(pairs):
  xs, ys = zip(*pairs, strict=True)
  return jnp.concatenate(xs), jnp.concatenate(ys)


@pytest.mark.parametrize("net", NETS)
def test_lpips_matches_lpips_package(net):
  by_shape = {}
  for case in CASES:
    by_shape.setdefault(tuple(case["shape"]), []).append(case)
  for cases in by_shape.values():  # one compilation per image shape
    got = _lpips(*_stack([_pair(c) for c in cases]), net=net, params=_params(net))
    want = [c[f"lpips_{net}"] for c in cases]
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=str([c["name"] for c in cases]))


@pytest.mark.parametrize("net", NETS)
def test_gradient_golden_identity_and_constants(net):
  """One batch: a golden gradient, identical images, and constant (flat, black) images."""
  case = CASES[0]
  x, y = _pair(case)
  black, grey = jnp.zeros_like(x), jnp.full_like(x, 0.5)
  xs, ys = _stack([(x, y), (x, x), (black, grey), (grey, black), (black, black)])
  values, grads = _lpips_and_grad(_params(net), xs, ys, net=net)
  chex.assert_tree_all_finite((values, grads))
  np.testing.assert_allclose(values[0], case[f"lpips_{net}"], rtol=1e-5)
  v = np.random.default_rng(case["grad_direction_seed"]).standard_normal(x.shape[1:])
  dot = jnp.sum(grads[0] * v.astype(np.float32))
  np.testing.assert_allclose(dot, case[f"grad_dot_v_{net}"], rtol=1e-4)
  assert values[1] == 0.0 and values[4] == 0.0  # identical images: exactly zero
  assert float(jnp.max(jnp.abs(grads[1]))) < 1e-7 and float(jnp.max(jnp.abs(grads[4]))) < 1e-7
  assert values[2] > 0.0 and values[3] > 0.0


def test_gradient_golden_odd_size():
  """45x70 drops trailing rows in torch's floor-mode pooling; the gradient must agree."""
  case = next(c for c in CASES if c["name"] == "chelsea_blur_odd")
  x, y = _pair(case)
  values, grads = _lpips_and_grad(_params("alex"), x, y, net="alex")
  v = np.random.default_rng(case["grad_direction_seed"]).standard_normal(x.shape[1:])
  np.testing.assert_allclose(
    jnp.sum(grads[0] * v.astype(np.float32)), case["grad_dot_v_alex"], rtol=1e-4
  )


def test_deepsim_matches_lpips_trunk():
  params = _params("alex")["backbone"]
  cases = [c for c in CASES if c["shape"] == [64, 64, 3]][:3]
  x, y = _stack([_pair(c) for c in cases])
  for layer in deep.ALEX_LAYERS:
    got = _deepsim(x, y, layer=layer, params=params)
    np.testing.assert_allclose(
      got, [c[f"deepsim_{layer}"] for c in cases], rtol=1e-5, err_msg=layer
    )


def test_dead_features_have_finite_gradient():
  """All ReLUs off (||f|| = 0 everywhere): LPIPS's eps keeps the value 0, the gradient finite."""
  trunk = _params("alex")["backbone"]
  params = {k: {"kernel": 0 * v["kernel"], "bias": v["bias"] * 0 - 1} for k, v in trunk.items()}
  heads = _params("alex")["heads"]
  x, y = jnp.zeros((1, 45, 70, 3)), jnp.ones((1, 45, 70, 3))  # the odd-size test's compilation
  values, g = _lpips_and_grad({"backbone": params, "heads": heads}, x, y, net="alex")
  assert values[0] == 0.0
  chex.assert_tree_all_finite(g)
  # The same at the source, without a ReLU whose select would mask a nan from sqrt'(0).
  weights = jnp.arange(4.0)
  grad = jax.grad(lambda f: jnp.sum(deep._unit_normalise(f) * weights))(jnp.zeros((2, 4)))
  chex.assert_tree_all_finite(grad)


def test_bfloat16_input():
  cases = [c for c in CASES if c["shape"] == [64, 64, 3]]
  x, y = _stack([_pair(c) for c in cases])
  got = _lpips(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16), params=_params("alex"))
  assert got.dtype == jnp.float32  # computed in float32 on the bfloat16-rounded images
  np.testing.assert_allclose(got, [c["lpips_alex"] for c in cases], rtol=0.02)


def test_feature_shapes_match_torchvision():
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  alex = jax.eval_shape(deep.alexnet_features, _params("alex")["backbone"], x)
  assert {k: v.shape[1:] for k, v in alex.items()} == {
    "conv1": (15, 15, 64),
    "conv2": (7, 7, 192),
    "conv3": (3, 3, 384),
    "conv4": (3, 3, 256),
    "conv5": (3, 3, 256),
  }
  tiny = jax.ShapeDtypeStruct((1, 7, 7, 3), jnp.float32)
  shallow = jax.eval_shape(
    functools.partial(deep.alexnet_features, layers=("conv1",)), _params("alex")["backbone"], tiny
  )
  assert shallow["conv1"].shape == (1, 1, 1, 64)


@needs_vgg
def test_vgg_feature_shapes():
  x = jax.ShapeDtypeStruct((1, 16, 32, 3), jnp.float32)
  feats = jax.eval_shape(deep.vgg16_features, _params("vgg")["backbone"], x)
  assert [v.shape[1:] for v in feats.values()] == [
    (16, 32, 64),
    (8, 16, 128),
    (4, 8, 256),
    (2, 4, 512),
    (1, 2, 512),
  ]


def test_deepsim_random_comparator():
  params = deep.alexnet_random_params(jax.random.key(1))
  chex.assert_trees_all_equal_shapes(params, _params("alex")["backbone"])
  x = jax.random.uniform(jax.random.key(2), (3, 64, 64, 3))  # the golden test's compilations
  y = jnp.clip(x + 0.1, 0, 1)
  loss = _deepsim(x, y, layer="conv5", params=params)
  assert loss.shape == (3,) and np.all(np.asarray(loss) > 0)
  assert np.all(np.asarray(_deepsim(x, x, layer="conv5", params=params)) == 0)
  g = jax.jit(jax.grad(lambda y: deep.deepsim_feature_loss(x, y, params=params).sum()))(y)
  chex.assert_tree_all_finite(g)
  # The full LPIPS pytree is accepted too (its "backbone" is used).
  full = _deepsim(x, y, layer="conv2", params=_params("alex"))
  np.testing.assert_allclose(
    full, _deepsim(x, y, layer="conv2", params=_params("alex")["backbone"])
  )


def test_weights_are_arguments_not_constants():
  lowered = jax.jit(deep.lpips).lower(
    jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 3)), params=_params("alex")
  )
  assert len(lowered.as_text()) < 200_000  # the 10 MB of weights are parameters of the program


def test_bad_inputs_raise_with_fix():
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match="channels"):
    deep.lpips(jnp.zeros((1, 32, 32, 4)), jnp.zeros((1, 32, 32, 4)), params=_params("alex"))
  with pytest.raises(ValueError, match="at least 31x31.*resize"):
    deep.lpips(x[:, :30], x[:, :30], params=_params("alex"))
  with pytest.raises(ValueError, match="net must be one of"):
    deep.lpips(x, x, net="squeeze")
  with pytest.raises(ValueError, match="layer must be one of"):
    deep.deepsim_feature_loss(x, x, layer="fc6", params=_params("alex"))
  with pytest.raises(ValueError, match="choose from"):
    deep.alexnet_features(_params("alex")["backbone"], x, layers=("relu5",))


def test_missing_weights_name_the_fetch_command(tmp_path, monkeypatch):
  monkeypatch.setenv("PERCEPTUAL_JAX_CACHE", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="python -m perceptual.deep fetch"):
    pretrained.load_weights("vgg")


def test_checksum_and_pickle_guards(tmp_path, monkeypatch):
  flat = pretrained.load_weights("alex")
  assert pretrained.arrays_sha256(flat) == pretrained.WEIGHTS_SHA256["alex"]
  flat["heads/conv1"] = flat["heads/conv1"] + 1e-3
  monkeypatch.setattr(pretrained, "_package_dir", lambda: tmp_path / "none")
  monkeypatch.setenv("PERCEPTUAL_JAX_CACHE", str(tmp_path))
  np.savez(tmp_path / "lpips_alex.npz", **flat)
  with pytest.raises(ValueError, match="checksum"):
    pretrained.load_weights("alex")
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    pretrained._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(os.getcwd))).load()
  arrays = {"a": np.arange(3.0)}
  ok = pretrained._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays))).load()
  np.testing.assert_array_equal(ok["a"], arrays["a"])


def test_lpips_dropout_for_fitting():
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  y = jnp.clip(x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), 0, 1)
  plain = deep.lpips(x, y)
  key = jax.random.key(2)
  np.testing.assert_allclose(deep.lpips(x, y, dropout_key=key, dropout_rate=0.0), plain)
  dropped = deep.lpips(x, y, dropout_key=key, dropout_rate=0.5)
  assert np.all(np.isfinite(dropped)) and not np.allclose(dropped, plain)
  # Survivors are scaled by 1 / (1 - rate): the mean over masks is the plain distance.
  keys = jax.random.split(jax.random.key(3), 64)
  means = jax.vmap(lambda k: deep.lpips(x, y, dropout_key=k, dropout_rate=0.5))(keys).mean(0)
  np.testing.assert_allclose(means, plain, rtol=0.05)
  with pytest.raises(ValueError, match="dropout_rate"):
    deep.lpips(x, y, dropout_key=key, dropout_rate=1.0)
