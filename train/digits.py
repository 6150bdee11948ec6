"""A digit classifier as judge of image models trained on MNIST-like data, and its scores.

The classifier-based scores of MNIST generative models (a classifier trained on real training
digits, never seen by the model, labels what the model draws):

- `class_accuracy`: the share of test reconstructions classified as the test digit's label;
- `class_coverage`: the number of classes that are the classifier's choice for at least 1 % of the
  prior samples (10 for a model that draws every digit, 1 for a collapsed one);
- `confidence`: the mean largest class probability of the samples (low on blurred or
  in-between shapes);
- `inception_score`: `exp(E_x KL(p(y|x) || p(y)))` over the samples (Salimans et al. 2016,
  "Improved Techniques for Training GANs", https://arxiv.org/abs/1606.03498), in [1, 10]: high
  when each sample is one confident class and the classes are balanced;
- `sample_sharpness` (from `score_vae`): the mean gradient magnitude of the samples over that of
  the real test digits (`gradient_magnitude`): near 1 for samples as crisp as real digits, lower
  for blurred ones.

    classifier = digits.classifier(dataset)  # trained once, then read from the cache
    scores = digits.score_vae(classifier, encode, decode, images, labels, key=key)

The classifier, a two-convolution network, is trained with a fixed seed on the training split and
cached under `perceptual.pretrained.cache_dir() / "digits"`, keyed by the dataset, image shape and
`Settings`, so a changed classifier is trained anew. Its test accuracy comes with every score:
scores are only as good as the judge. `train.vae` scores its final state with it (metrics.jsonl);
`python -m eval.digits` scores a finished run.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from perceptual import pretrained
from train import data, loop

# The datasets the judge scores: ten classes of centred grey 28x28 shapes, zero-padded to 32x32.
MNIST_LIKE = ("mnist_embedded", "fashion_mnist_debian")
IMAGE_SHAPE = (32, 32, 1)
# Part of the cache key: bump it when `Net` or `fit` change in a way `Settings` does not show.
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Settings:
  """The classifier's hyper-parameters (all part of its cache key)."""

  features: tuple[int, ...] = (16, 32)
  hidden: int = 128
  steps: int = 600
  batch_size: int = 128
  learning_rate: float = 2e-3
  seed: int = 0


class Net(nn.Module):
  """Strided convolutions (5x5, stride 2, ReLU) and one hidden dense layer -> 10 logits.

  Strides rather than pooling layers: on CPU the gradient of a pooling window costs more than the
  convolutions (29 against 12 ms per step of 128 on 2 cores; 97.6 and 97.4 % test accuracy).
  """

  features: tuple[int, ...]
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for f in self.features:
      x = nn.relu(nn.Conv(f, (5, 5), strides=2)(x))
    x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


class Classifier(NamedTuple):
  """A trained judge: its settings, parameters and accuracy on the dataset's test split."""

  settings: Settings
  params: Any
  test_accuracy: float


def applies(dataset: data.Dataset) -> bool:
  """Whether the judge scores models of `dataset`: an MNIST-like dataset loaded grey at 32x32."""
  return dataset.name in MNIST_LIKE and tuple(dataset.image_shape) == IMAGE_SHAPE


def cache_path(dataset: data.Dataset, settings: Settings, *, cache_dir: str | None = None) -> str:
  """`<cache_dir>/<dataset>-<hash of image shape, split sizes, settings, version>.msgpack`."""
  key = {
    "image_shape": list(dataset.image_shape),
    "sizes": [len(dataset.train), len(dataset.test)],  # a loader option (num_test) changes them
    "settings": dataclasses.asdict(settings),
    "version": _VERSION,
  }
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  folder = pathlib.Path(cache_dir) if cache_dir else pretrained.cache_dir() / "digits"
  return str(folder / f"{dataset.name.replace(':', '_')}-{digest}.msgpack")


def classifier(
  dataset: data.Dataset, *, settings: Settings = Settings(), cache_dir: str | None = None
) -> Classifier:
  """The judge of `dataset`: read from the cache, or trained with `fit` and cached.

  Args:
    dataset: a labelled 10-class dataset (`train.data.load`); its train split trains the judge,
      its test split measures it.
    settings: the classifier's hyper-parameters.
    cache_dir: folder of the cached classifiers; default `perceptual.pretrained.cache_dir()`
      / "digits" (`$PERCEPTUAL_JAX_CACHE` moves it).

  Returns:
    The classifier, its test accuracy included.
  """
  path = cache_path(dataset, settings, cache_dir=cache_dir)
  if os.path.exists(path):
    with open(path, "rb") as f:
      stored = serialization.msgpack_restore(f.read())
    return Classifier(settings, stored["params"], float(stored["test_accuracy"]))
  trained = fit(dataset, settings)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  blob = serialization.msgpack_serialize(
    {"params": jax.device_get(trained.params), "test_accuracy": trained.test_accuracy}
  )
  # Written whole, then renamed: two processes training at once never leave half a file.
  with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False) as f:
    f.write(blob)
  os.replace(f.name, path)
  return trained


def fit(dataset: data.Dataset, settings: Settings) -> Classifier:
  """Trains the classifier on `dataset.train` (Adam, cross-entropy) and scores `dataset.test`."""
  if dataset.num_classes != 10:
    raise ValueError(f"the judge needs 10 labelled classes; {dataset.name} has none or another.")
  net = Net(settings.features, settings.hidden)
  tx = optax.adam(settings.learning_rate)
  # Jitted: one compiled program instead of one per initializer (2 s on CPU).
  init = jax.jit(lambda key: net.init(key, jnp.zeros((1, *dataset.image_shape)))["params"])
  params = init(jax.random.key(settings.seed))

  @jax.jit
  def step(params, opt_state, batch):
    def loss(params):
      logits = net.apply({"params": params}, batch["image"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  per_epoch = data.steps_per_epoch(dataset.train, batch_size=settings.batch_size)
  for epoch in range(-(-settings.steps // per_epoch)):
    stop = min(per_epoch, settings.steps - epoch * per_epoch)
    for batch in data.batches(
      dataset.train, batch_size=settings.batch_size, seed=settings.seed, epoch=epoch, stop=stop
    ):
      params, opt_state = step(params, opt_state, batch)
  trained = Classifier(settings, params, 0.0)
  test = dataset.test.gather(np.arange(len(dataset.test)))
  accuracy = np.mean(np.argmax(probabilities(trained, test["image"]), -1) == test["label"])
  return trained._replace(test_accuracy=float(accuracy))


def probabilities(classifier: Classifier, images: Any, *, batch_size: int = 500) -> np.ndarray:
  """Class probabilities `[N, 10]` of float images `[N, 32, 32, 1]` in [0, 1]."""
  net = Net(classifier.settings.features, classifier.settings.hidden)
  variables = {"params": classifier.params}
  logits = [
    loop.apply(net, variables, jnp.asarray(images[i : i + batch_size], jnp.float32))
    for i in range(0, len(images), batch_size)
  ]
  return np.asarray(jax.nn.softmax(jnp.concatenate(logits), axis=-1))


def scores(
  classifier: Classifier,
  reconstructions: Any,
  labels: Any,
  samples: Any,
  *,
  min_share: float = 0.01,
) -> dict[str, float]:
  """The judge's scores of a model's test reconstructions and prior samples.

  Args:
    classifier: the judge (`classifier`).
    reconstructions: float `[N, 32, 32, 1]` in [0, 1], the model's reconstructions of test images.
    labels: int `[N]`, the test images' labels.
    samples: float `[M, 32, 32, 1]` in [0, 1], images the model draws from its prior.
    min_share: a class covers the samples when it is the choice for at least this share of them.

  Returns:
    `class_accuracy`, `class_coverage` (an int), `confidence`, `inception_score` (see the module
    docstring) and `classifier_accuracy`, the judge's own accuracy on real test images.
  """
  labels = np.asarray(labels)
  if len(reconstructions) != len(labels):
    raise ValueError(f"{len(reconstructions)} reconstructions but {len(labels)} labels.")
  recon = probabilities(classifier, reconstructions)
  p = probabilities(classifier, samples).astype(np.float64)
  counts = np.bincount(np.argmax(p, -1), minlength=p.shape[-1])
  marginal = p.mean(0)
  kl = np.sum(p * (np.log(p + 1e-12) - np.log(marginal + 1e-12)), axis=-1)
  return {
    "class_accuracy": float(np.mean(np.argmax(recon, -1) == labels)),
    "class_coverage": int(np.sum(counts >= min_share * len(p))),
    "confidence": float(np.mean(np.max(p, -1))),
    "inception_score": float(np.exp(np.mean(kl))),
    "classifier_accuracy": classifier.test_accuracy,
  }


def gradient_magnitude(images: Any) -> float:
  """Mean over images and pixels of `sqrt(dx^2 + dy^2)`, forward differences of `[N, H, W, C]`."""
  z = np.asarray(images, np.float64)
  dx, dy = z[:, :-1, 1:] - z[:, :-1, :-1], z[:, 1:, :-1] - z[:, :-1, :-1]
  return float(np.mean(np.sqrt(dx * dx + dy * dy)))


def score_vae(
  classifier: Classifier,
  encode: Callable[[jax.Array], jax.Array],
  decode: Callable[[jax.Array], jax.Array],
  images: Any,
  labels: Any,
  *,
  key: jax.Array,
  num_samples: int = 400,
  batch_size: int = 500,
) -> dict[str, float]:
  """`scores` of a VAE: test images decoded from their mean code, and prior samples `N(0, I)`.

  Args:
    classifier: the judge.
    encode: float images `[B, 32, 32, 1]` -> latent means `[B, latent]`.
    decode: latents `[B, latent]` -> images `[B, 32, 32, 1]` in [0, 1].
    images: float `[N, 32, 32, 1]` test images in [0, 1].
    labels: int `[N]`, their labels.
    key: draws the prior samples.
    num_samples: the number of prior samples.
    batch_size: images encoded and decoded at once.

  Returns:
    The dict of `scores` and `sample_sharpness`, the samples' `gradient_magnitude` over that of
    `images`.
  """
  codes = [
    encode(jnp.asarray(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
  ]
  recon = np.concatenate([np.asarray(decode(mu)) for mu in codes])
  z = jax.random.normal(key, (num_samples, codes[0].shape[-1]))
  samples = [np.asarray(decode(z[i : i + batch_size])) for i in range(0, num_samples, batch_size)]
  samples = np.concatenate(samples)
  sharpness = gradient_magnitude(samples) / gradient_magnitude(images)
  return {**scores(classifier, recon, labels, samples), "sample_sharpness": sharpness}
