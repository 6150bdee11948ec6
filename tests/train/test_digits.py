"""train.digits: the digit classifier, its cache, its scores, and its line in train.vae's log."""

import dataclasses
import json
import os
import time

import jax
import numpy as np
import pytest

from train import data, digits
from train import vae as vae_train


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """A fresh classifier cache for this module (`$PERCEPTUAL_JAX_CACHE/digits`)."""
  root = tmp_path_factory.mktemp("perceptual_cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("PERCEPTUAL_JAX_CACHE", str(root))
    yield root / "digits"


@pytest.fixture(scope="module")
def dataset():
  return data.load("mnist_embedded", image_size=32, channels=1)


@pytest.fixture(scope="module")
def judge(cache, dataset):
  """The default classifier, trained once here (about 12 s on 2 cores) and cached."""
  start = time.perf_counter()
  classifier = digits.classifier(dataset)
  print(f"classifier trained in {time.perf_counter() - start:.1f} s: {classifier.test_accuracy}")
  assert os.listdir(cache) == [os.path.basename(digits.cache_path(dataset, digits.Settings()))]
  return classifier


@pytest.fixture(scope="module")
def test_digits(dataset):
  return dataset.test.gather(np.arange(len(dataset.test)))


def test_classifier_is_accurate_on_real_test_digits(judge, test_digits):
  assert judge.test_accuracy >= 0.95
  predicted = np.argmax(digits.probabilities(judge, test_digits["image"]), -1)
  assert np.mean(predicted == test_digits["label"]) == judge.test_accuracy


def test_real_digits_score_as_a_perfect_model(judge, test_digits):
  x, labels = test_digits["image"], test_digits["label"]
  samples = x[np.random.default_rng(0).permutation(len(x))[:400]]  # the split is in label order
  scores = digits.scores(judge, x, labels, samples)
  assert scores["class_accuracy"] == judge.test_accuracy
  assert scores["classifier_accuracy"] == judge.test_accuracy
  assert scores["class_coverage"] == 10
  assert scores["confidence"] > 0.9
  assert 8.0 < scores["inception_score"] <= 10.0


def test_wrong_labels_and_one_repeated_digit_score_as_a_collapsed_model(judge, test_digits):
  x, labels = test_digits["image"], test_digits["label"]
  shuffled = np.random.default_rng(0).permutation(labels)
  scores = digits.scores(judge, x, shuffled, np.repeat(x[:1], 400, axis=0))
  assert abs(scores["class_accuracy"] - 0.1) < 0.04  # chance; 1,000 draws: sd 0.01
  assert scores["class_coverage"] == 1
  assert scores["inception_score"] == pytest.approx(1.0, abs=1e-6)


def test_coverage_counts_classes_chosen_for_at_least_one_percent_of_samples(judge, test_digits):
  x, labels = test_digits["image"], test_digits["label"]
  correct = np.argmax(digits.probabilities(judge, x), -1) == labels
  ones, twos = x[correct & (labels == 1)], x[correct & (labels == 2)]
  samples = np.concatenate([ones[:1]] * 396 + [twos[:4]])  # the 2s are exactly 1 %
  assert digits.scores(judge, x[:2], labels[:2], samples)["class_coverage"] == 2
  assert digits.scores(judge, x[:2], labels[:2], samples[1:])["class_coverage"] == 2
  assert digits.scores(judge, x[:2], labels[:2], samples[:-1])["class_coverage"] == 1


def test_scores_reject_unmatched_labels(judge, test_digits):
  x = test_digits["image"]
  with pytest.raises(ValueError, match="3 reconstructions but 2 labels"):
    digits.scores(judge, x[:3], test_digits["label"][:2], x[:4])


def test_score_vae_decodes_mean_codes_and_prior_samples(judge, test_digits):
  x, labels = test_digits["image"], test_digits["label"]
  drawn = []

  def decode(z):
    drawn.append(z.shape)
    return z.reshape(-1, 32, 32, 1)

  key = jax.random.key(0)
  scores = digits.score_vae(
    judge, lambda x: x.reshape(len(x), -1), decode, x, labels, key=key, num_samples=300
  )
  assert scores["class_accuracy"] == judge.test_accuracy  # the identity "autoencoder"
  assert drawn[-1] == (300, 1024)  # one batch of prior samples of the encoder's latent size
  noise = np.asarray(jax.random.normal(key, (300, 1024)).reshape(300, 32, 32, 1))
  sharpness = digits.gradient_magnitude(noise) / digits.gradient_magnitude(x)
  assert scores == {**digits.scores(judge, x, labels, noise), "sample_sharpness": sharpness}


def test_gradient_magnitude_is_lower_for_blurred_digits(test_digits):
  x = np.asarray(test_digits["image"], np.float64)
  blurred = (x + np.roll(x, 1, 1) + np.roll(x, 1, 2) + np.roll(x, (1, 1), (1, 2))) / 4
  assert 0.3 < digits.gradient_magnitude(blurred) / digits.gradient_magnitude(x) < 0.9
  step = np.zeros((1, 4, 4, 1))
  step[:, :, 2:] = 1.0  # one vertical edge: |dx| = 1 in 3 of the 9 differences
  assert digits.gradient_magnitude(step) == pytest.approx(3 / 9)


def test_cache_is_reused(judge, dataset, monkeypatch):
  monkeypatch.setattr(digits, "fit", lambda *args: pytest.fail("the cached judge was retrained"))
  again = digits.classifier(dataset)
  assert again.test_accuracy == judge.test_accuracy
  jax.tree.map(np.testing.assert_array_equal, again.params, jax.device_get(judge.params))


def test_changed_settings_train_a_new_classifier(judge, dataset, cache, monkeypatch):
  fits, fit = [], digits.fit
  monkeypatch.setattr(digits, "fit", lambda *args: fits.append(args[1]) or fit(*args))
  cheap = digits.Settings(steps=2)
  digits.classifier(dataset, settings=cheap)
  digits.classifier(dataset, settings=cheap)
  assert fits == [cheap]
  assert len(os.listdir(cache)) == 2


def test_cache_key_holds_dataset_shape_and_every_setting(dataset):
  paths = [
    digits.cache_path(dataset, digits.Settings()),
    digits.cache_path(dataclasses.replace(dataset, name="fashion_mnist_debian"), digits.Settings()),
    digits.cache_path(dataclasses.replace(dataset, image_shape=(32, 32, 3)), digits.Settings()),
    digits.cache_path(data.load("mnist_embedded", image_size=32, num_test=500), digits.Settings()),
  ]
  for field in dataclasses.fields(digits.Settings):
    value = getattr(digits.Settings(), field.name)
    changed = value + (8,) if isinstance(value, tuple) else value * 2 + 1
    paths.append(digits.cache_path(dataset, digits.Settings(**{field.name: changed})))
  assert len(set(paths)) == len(paths)


def test_applies_to_grey_32x32_mnist_like_data(dataset):
  assert digits.applies(dataset)
  assert not digits.applies(data.load("mnist_embedded", image_size=32, channels=3))
  assert not digits.applies(data.load("skimage_patches", image_size=32, channels=1))


def test_vae_run_ends_with_the_judges_scores(judge, monkeypatch, tmp_path):
  # Every registry metric at the epoch end is another test's; this one checks the final line.
  monkeypatch.setattr(vae_train, "metric_params", lambda channels: {})
  monkeypatch.setattr(digits, "fit", lambda *args: pytest.fail("the cached judge was retrained"))
  config = vae_train.Config(
    loss="l2", arch="tiny", workdir=str(tmp_path), max_steps=2, progress=False, eval_examples=64
  )
  state = vae_train.train(config)
  lines = [
    line for line in _jsonl(tmp_path / "metrics.jsonl") if "final_digits_class_accuracy" in line
  ]
  assert len(lines) == 1 and lines[0]["step"] == 2
  scores = {k.removeprefix("final_digits_"): v for k, v in lines[0].items() if k != "step"}
  full = data.load("mnist_embedded", image_size=32, channels=1).test
  test = data.subset(full, np.arange(64) * len(full) // 64)  # every class, not the first 64 zeros
  model = vae_train.create(vae_train.resolve(config), 1)[0]
  variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  batch = test.gather(np.arange(64))
  mu, _ = model.apply(variables, batch["image"], method=model.encode)
  recon = model.apply(variables, mu, method=model.decode)
  samples = model.apply(
    variables, jax.random.normal(jax.random.key(0), (400, 2)), method=model.decode
  )
  expected = {
    **digits.scores(judge, recon, batch["label"], samples),
    "sample_sharpness": digits.gradient_magnitude(samples)
    / digits.gradient_magnitude(batch["image"]),
  }
  assert scores == pytest.approx(expected, rel=1e-5)
  assert scores["classifier_accuracy"] == judge.test_accuracy
  vae_train.train(config)  # finished: scored again, one final line kept
  assert (
    sum("final_digits_class_accuracy" in line for line in _jsonl(tmp_path / "metrics.jsonl")) == 1
  )


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
