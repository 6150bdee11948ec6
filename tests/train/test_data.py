"""Tests of the data layer: datasets, preprocessing, deterministic resumable multi-host batches."""

import hashlib
import io
import shutil
import socket
import sys
import threading
import time

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from perceptual import rgb_to_grey
from train import data, datasets

_TINY_IMAGES = np.random.default_rng(0).integers(0, 256, (14, 6, 5, 1), dtype=np.uint8)


class PerceptualTestTinyDigits(tfds.core.GeneratorBasedBuilder):
  """A TF-free tfds builder: 10 train and 4 test 6x5 grey images, labels `index % 3`."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    features = {
      "image": tfds.features.Image(shape=(6, 5, 1)),
      "label": tfds.features.ClassLabel(num_classes=3),
    }
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    return {
      "train": self._generate_examples(range(10)),
      "test": self._generate_examples(range(10, 14)),
    }

  def _generate_examples(self, indices):
    for i in indices:
      png = io.BytesIO()
      Image.fromarray(_TINY_IMAGES[i, ..., 0]).save(png, format="PNG")  # Numpy needs TF; PNG not.
      yield i, {"image": png.getvalue(), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  PerceptualTestTinyDigits(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def _id_split(n: int) -> data.Split:
  """A split whose labels are the example indices, so batches show which examples they hold."""
  return data.Split(np.zeros((n, 2, 2, 1), np.uint8), np.arange(n))


def _labels(iterator) -> list[list[int]]:
  return [b["label"].tolist() for b in iterator]


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(ValueError, match="mnist_embedded, fashion_mnist_debian, skimage_patches"):
    data.load("mnist")


@pytest.mark.parametrize("kwargs", [{"image_size": 0}, {"image_size": 3.5}, {"channels": 2}])
def test_bad_load_options(kwargs):
  with pytest.raises(ValueError, match="image_size|channels"):
    data.load("mnist_embedded", **kwargs)


def test_mnist_embedded_padded_to_32():
  ds = data.load("mnist_embedded", image_size=32)
  assert (len(ds.train), len(ds.test), ds.image_shape, ds.num_classes) == (
    9000,
    1000,
    (32, 32, 1),
    10,
  )
  batch = ds.test.gather(np.arange(50))
  assert batch["image"].shape == (50, 32, 32, 1) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32 and set(batch) == {"image", "label"}
  assert batch["image"].min() >= 0 and batch["image"].max() <= 1 and batch["image"].max() == 1
  # Czolbe et al.: 2 px of zeros on each side around the unchanged digit.
  np.testing.assert_array_equal(
    batch["image"][:, 2:30, 2:30], ds.test.images[:50] / np.float32(255)
  )
  assert not batch["image"][:, :2].any() and not batch["image"][:, 30:].any()
  assert not batch["image"][:, :, :2].any() and not batch["image"][:, :, 30:].any()


def test_mnist_embedded_test_split_is_stratified_and_disjoint():
  ds = data.load("mnist_embedded")
  with np.load(datasets._EMBEDDED_MNIST) as f:
    all_counts = np.bincount(f["labels"])
  test_counts = np.bincount(ds.test.labels, minlength=10)
  assert test_counts.sum() == 1000 and (test_counts > 0).all()
  assert np.abs(test_counts - all_counts / 10).max() <= 1
  digest = {hashlib.sha1(x.tobytes()).hexdigest() for x in ds.train.images}
  assert not any(hashlib.sha1(x.tobytes()).hexdigest() in digest for x in ds.test.images)
  train, test = datasets.stratified_split(np.repeat(np.arange(3), [5, 7, 9]), 6, seed=1)
  assert sorted([*train, *test]) == list(range(21)) and len(test) == 6
  assert data.load("mnist_embedded", seed=5).test.labels.tolist() == ds.test.labels.tolist()


def test_batches_are_deterministic_permutations_per_epoch():
  split = _id_split(103)
  epoch0 = _labels(data.batches(split, batch_size=10, seed=3, epoch=0))
  assert len(epoch0) == data.steps_per_epoch(split, batch_size=10) == 10
  flat = sum(epoch0, [])
  assert len(set(flat)) == 100 and all(len(b) == 10 for b in epoch0)  # Remainder dropped.
  assert epoch0 == _labels(data.batches(split, batch_size=10, seed=3, epoch=0))
  assert epoch0 != _labels(data.batches(split, batch_size=10, seed=3, epoch=1))
  assert epoch0 != _labels(data.batches(split, batch_size=10, seed=4, epoch=0))


@pytest.mark.parametrize("start", [0, 1, 4, 10])
def test_start_resumes_the_exact_order(start):
  split = _id_split(103)
  full = _labels(data.batches(split, batch_size=10, seed=7, epoch=2))
  assert _labels(data.batches(split, batch_size=10, seed=7, epoch=2, start=start)) == full[start:]
  stopped = data.batches(split, batch_size=10, seed=7, epoch=2, start=start, stop=max(start, 6))
  assert _labels(stopped) == full[start : max(start, 6)]


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_union_to_the_global_batch(process_count):
  split = _id_split(50)
  for make in (
    lambda **kw: data.batches(split, batch_size=8, seed=1, epoch=5, start=2, **kw),
    lambda **kw: data.eval_batches(split, batch_size=8, **kw),
  ):
    whole = list(make())
    parts = [list(make(process_index=p, process_count=process_count)) for p in range(process_count)]
    assert all(len(p) == len(whole) for p in parts)  # Every process runs the same number of steps.
    for i, batch in enumerate(whole):
      joined = jax.tree.map(lambda *xs: np.concatenate(xs), *[p[i] for p in parts])
      chex.assert_trees_all_equal(joined, batch)


def test_eval_batches_cover_every_example_once_in_order():
  split = _id_split(23)
  evals = list(data.eval_batches(split, batch_size=8))
  assert [b["image"].shape for b, _ in evals] == [(8, 2, 2, 1)] * 3
  np.testing.assert_array_equal(np.concatenate([m for _, m in evals]), np.arange(24) < 23)
  kept = np.concatenate([b["label"][m] for b, m in evals])
  np.testing.assert_array_equal(kept, np.arange(23))
  index = np.concatenate([b["index"] for b, _ in evals])  # the padding repeats example 0
  np.testing.assert_array_equal(index, np.where(np.arange(24) < 23, np.arange(24), 0))


def test_prefetch_same_batches_stops_and_reraises():
  split = _id_split(64)
  eager = _labels(data.batches(split, batch_size=4, seed=0, epoch=0, prefetch=0))
  assert _labels(data.batches(split, batch_size=4, seed=0, epoch=0, prefetch=3)) == eager
  before = threading.active_count()
  iterator = data.batches(split, batch_size=4, seed=0, epoch=0, prefetch=2)
  next(iterator)
  iterator.close()  # What `break` does: the worker thread is joined.
  assert threading.active_count() == before
  broken = data.Split(np.zeros((8, 2, 2, 1), np.float32), None)  # Not uint8.
  with pytest.raises(ValueError, match="uint8"):
    next(data.eval_batches(broken, batch_size=4, prefetch=2))


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"batch_size": 6, "process_count": 4}, "multiple of process_count"),
    ({"batch_size": 8, "process_count": 2, "process_index": 2}, "process_index"),
    ({"batch_size": 8, "start": 9}, "start"),
    ({"batch_size": 8, "start": 3, "stop": 2}, "stop"),
    ({"batch_size": 64}, "fewer than batch_size"),
  ],
)
def test_bad_batch_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.batches(_id_split(50), seed=0, epoch=0, **kwargs)


def test_preprocess_channels_and_resizing():
  rgb = np.random.default_rng(1).integers(0, 256, (2, 9, 9, 3), dtype=np.uint8)
  grey = data.preprocess(rgb, image_size=None, channels=1)
  np.testing.assert_allclose(grey, rgb_to_grey(rgb / np.float32(255)), atol=1e-6)
  repeated = data.preprocess(rgb[..., :1], image_size=None, channels=3)
  np.testing.assert_array_equal(repeated, np.repeat(rgb[..., :1] / np.float32(255), 3, -1))
  # CelebA-like 218x178 -> centre 178x178 -> 64x64: a constant image stays constant...
  flat = np.full((1, 218, 178, 3), 200, np.uint8)
  np.testing.assert_allclose(data.preprocess(flat, image_size=64, channels=None), 200 / 255)
  # ... and the centre crop cuts the 20 rows above and below.
  bands = np.zeros((1, 218, 178, 1), np.uint8)
  bands[:, 20:198] = 255
  assert data.preprocess(bands, image_size=178, channels=None).min() == 1
  sizes = [np.zeros((h, w, 1), np.uint8) for h, w in ((40, 50), (30, 30))]
  assert data.preprocess(sizes, image_size=16, channels=3).shape == (2, 16, 16, 3)
  with pytest.raises(ValueError, match="image_size"):
    data.preprocess(sizes, image_size=None, channels=None)


def test_skimage_patches():
  ds = data.load("skimage_patches", image_size=33, seed=0, num_train=64, num_test=16)
  assert (len(ds.train), len(ds.test), ds.image_shape, ds.num_classes) == (
    64,
    16,
    (33, 33, 3),
    None,
  )
  batch = ds.train.gather(np.arange(64))
  assert (
    batch["image"].dtype == np.float32 and 0 <= batch["image"].min() <= batch["image"].max() <= 1
  )
  assert set(batch["label"]) <= {0, 1, 2, 3} and len(set(batch["label"])) > 1
  photo, top, left = ds.train.images.offsets[5]
  crop = ds.train.images.photos[photo][top : top + 33, left : left + 33]
  np.testing.assert_array_equal(batch["image"][5], crop / np.float32(255))
  again = data.load("skimage_patches", image_size=33, seed=0, num_train=64, num_test=16)
  other = data.load("skimage_patches", image_size=33, seed=1, num_train=64, num_test=16)
  np.testing.assert_array_equal(again.train.images.offsets, ds.train.images.offsets)
  assert not np.array_equal(other.train.images.offsets, ds.train.images.offsets)
  np.testing.assert_array_equal(other.test.images.offsets, ds.test.images.offsets)
  assert not set(map(id, ds.train.images.photos)) & set(map(id, ds.test.images.photos))
  grey = data.load("skimage_patches", channels=1, num_train=8, num_test=8)
  assert grey.image_shape == (64, 64, 1)


@pytest.mark.skipif(
  not (datasets.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
  reason="Debian package not installed: apt-get install -y dataset-fashion-mnist",
)
def test_fashion_mnist_debian():
  ds = data.load("fashion_mnist_debian", image_size=32)
  assert (len(ds.train), len(ds.test), ds.image_shape) == (60000, 10000, (32, 32, 1))
  np.testing.assert_array_equal(np.bincount(ds.train.labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test.labels), [1000] * 10)
  # The official files start with ankle boot, T-shirt, T-shirt / ankle boot, pullover, trouser.
  assert ds.train.labels[:3].tolist() == [9, 0, 0] and ds.test.labels[:3].tolist() == [9, 2, 1]


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
    data.load("fashion_mnist_debian", directory=str(tmp_path))


def test_tfds_prepared_builder_read_without_tensorflow(tiny_tfds_dir):
  ds = data.load("tfds:perceptual_test_tiny_digits", data_dir=tiny_tfds_dir)
  assert (len(ds.train), len(ds.test), ds.image_shape, ds.num_classes) == (10, 4, (6, 5, 1), 3)
  batch = ds.test.gather(np.arange(4))
  # tfds shuffles records when it writes them: find each image's generator index.
  found = [
    next(i for i, x in enumerate(_TINY_IMAGES) if np.array_equal(x, y))
    for y in ds.test.images[np.arange(4)]
  ]
  assert sorted(found) == [10, 11, 12, 13]
  np.testing.assert_array_equal(batch["image"], _TINY_IMAGES[found] / np.float32(255))
  assert batch["label"].tolist() == [i % 3 for i in found]  # Image and label of the same record.
  padded = data.load(
    "tfds:perceptual_test_tiny_digits", data_dir=tiny_tfds_dir, image_size=8, channels=3
  )
  epoch = list(data.batches(padded.train, batch_size=5, seed=0, epoch=0))
  assert [b["image"].shape for b in epoch] == [(5, 8, 8, 3)] * 2
  labels = np.concatenate([b["label"] for b in epoch])
  assert sorted(labels.tolist()) == sorted(i % 3 for i in range(10))
  assert "tensorflow" not in sys.modules


def test_tfds_unprepared_fails_fast_without_network(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError("the data layer tried to open a connection")

  monkeypatch.setattr(socket.socket, "connect", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError, match="tfds build mnist --file_format=array_record"):
    data.load("tfds:mnist", data_dir=str(tmp_path))
  assert time.perf_counter() - start < 5
  with pytest.raises(ValueError, match="tfds has no dataset"):
    data.load("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


def test_tfds_tfrecord_dataset_says_how_to_convert(tiny_tfds_dir, tmp_path):
  shutil.copytree(tiny_tfds_dir, tmp_path, dirs_exist_ok=True)
  (info,) = tmp_path.glob("*/*/dataset_info.json")
  info.write_text(info.read_text().replace('"array_record"', '"tfrecord"'))
  with pytest.raises(FileNotFoundError, match="stored as tfrecord.*--file_format=array_record"):
    data.load("tfds:perceptual_test_tiny_digits", data_dir=str(tmp_path))


def test_head_keeps_the_first_examples():
  split = data.Split(np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2, 1), np.arange(10))
  first = data.head(split, 3)
  assert len(first) == 3
  np.testing.assert_array_equal(first.gather(np.arange(3))["label"], [0, 1, 2])
  np.testing.assert_array_equal(
    first.gather(np.arange(3))["image"], split.gather(np.arange(3))["image"]
  )
  assert data.head(split, None) is split and data.head(split, 50) is split
  with pytest.raises(ValueError, match="positive"):
    data.head(split, 0)
