"""Raw random-access image sources: the embedded MNIST digits, Debian Fashion-MNIST, scikit-image
photo patches and prepared tensorflow-datasets (tfds) builders.

Every loader returns a `Raw` tuple of uint8 `[h, w, c]` examples behind the same interface: an
object with `len()` that gathers `[k, h, w, c]` uint8 by an integer index array (numpy arrays
qualify as they are). Labels are int arrays or sources of the same kind, or None. Resizing, float
conversion and channels are `train.data`'s job, so nothing here is ever held as float32.
Nothing here downloads: data that is not on disk fails at once with a message saying how to get it.
"""

import dataclasses
import functools
import gzip
import pathlib
from typing import Any, NamedTuple

import numpy as np

DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
_EMBEDDED_MNIST = pathlib.Path(__file__).parent / "data" / "mnist_10k.npz"
# Held-out sets are drawn with a fixed seed, never the training seed, so that test numbers of runs
# with different seeds are measured on the same examples.
_TEST_SEED = 20240611
# Bundled with the scikit-image wheel (no download). Test patches come from a photo never used for
# training; `cat` is an alias of `chelsea`, and the right stereo view would duplicate the left one.
_TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "motorcycle")
_TEST_PHOTOS = ("chelsea",)


class Raw(NamedTuple):
  """Raw examples of one dataset: `(images, labels)` per split; `num_classes` None if unlabelled."""

  train: tuple[Any, Any]
  test: tuple[Any, Any]
  num_classes: int | None


def stratified_split(labels: np.ndarray, num_test: int, *, seed: int) -> tuple[np.ndarray, ...]:
  """Returns sorted `(train_indices, test_indices)`, the test part class-stratified.

  Each class is shuffled; an example's key is its rank in its class over the class size, and the
  `num_test` smallest keys form the test set: every class gets its share to within one example,
  and the total is exact (per-class rounding would not be).
  """
  rng = np.random.default_rng(seed)
  key = np.empty(len(labels))
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    key[rng.permutation(members)] = np.arange(len(members)) / len(members)
  order = np.lexsort((rng.random(len(labels)), key))
  return np.sort(order[num_test:]), np.sort(order[:num_test])


def mnist_embedded(*, seed: int = 0, image_size: int | None = None, num_test: int = 1000) -> Raw:
  """The 10,000 MNIST digits shipped in `train/data/` (README there), split train/test.

  Args:
    seed: unused: the class-stratified test split is fixed.
    image_size: unused (resizing is `train.data`'s).
    num_test: size of the held-out test split.
  """
  del seed, image_size
  with np.load(_EMBEDDED_MNIST) as f:
    images, labels = f["images"][..., None], f["labels"].astype(np.int32)
  if not 0 < num_test < len(labels):
    raise ValueError(f"num_test must be in (0, {len(labels)}), got {num_test}.")
  train, test = stratified_split(labels, num_test, seed=_TEST_SEED)
  return Raw((images[train], labels[train]), (images[test], labels[test]), 10)


@functools.cache
def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes (the MNIST format) into a read-only uint8 array."""
  data = gzip.decompress(path.read_bytes())
  if data[:3] != b"\0\0\x08":
    raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {data[:4].hex()}).")
  shape = np.frombuffer(data, ">u4", count=data[3], offset=4)
  return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(shape)


def fashion_mnist_debian(
  *, seed: int = 0, image_size: int | None = None, directory: str | None = None
) -> Raw:
  """Fashion-MNIST (60,000 train, 10,000 test) from the Debian package `dataset-fashion-mnist`.

  Args:
    seed: unused (the official split).
    image_size: unused (resizing is `train.data`'s).
    directory: folder of the four `*-ubyte.gz` files; default where the Debian package puts them.
  """
  del seed, image_size
  root = pathlib.Path(directory) if directory else DEBIAN_FASHION_MNIST
  if not (root / "t10k-labels-idx1-ubyte.gz").exists():
    raise FileNotFoundError(
      f"Fashion-MNIST not found in {root}. Install it with "
      "`apt-get update && apt-get install -y dataset-fashion-mnist`, or pass directory= a folder "
      "holding the four official *-ubyte.gz files."
    )
  images = {s: read_idx(root / f"{s}-images-idx3-ubyte.gz")[..., None] for s in ("train", "t10k")}
  labels = {s: read_idx(root / f"{s}-labels-idx1-ubyte.gz").astype(np.int32) for s in images}
  return Raw((images["train"], labels["train"]), (images["t10k"], labels["t10k"]), 10)


@functools.cache
def photo(name: str) -> np.ndarray:
  """A scikit-image photograph by name (`"motorcycle"`: the left image of `stereo_motorcycle`)."""
  import skimage.data  # Deferred: only this dataset needs scikit-image.

  return (
    skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
  )


@dataclasses.dataclass(frozen=True)
class PatchSource:
  """Square crops `[size, size, 3]` of `photos` at the `(photo, top, left)` rows of `offsets`."""

  photos: tuple[np.ndarray, ...]
  offsets: np.ndarray
  size: int

  def __len__(self) -> int:
    return len(self.offsets)

  def __getitem__(self, index: np.ndarray) -> np.ndarray:
    s = self.size
    return np.stack([self.photos[p][y : y + s, x : x + s] for p, y, x in self.offsets[index]])


def _patches(names: tuple[str, ...], size: int, count: int, seed: int) -> tuple[PatchSource, Any]:
  photos = tuple(photo(n) for n in names)
  positions = np.array([(p.shape[0] - size + 1) * (p.shape[1] - size + 1) for p in photos])
  if size < 1 or positions.min() < 1:
    raise ValueError(
      f"Patch size must be in [1, {min(min(p.shape[:2]) for p in photos)}], got {size}."
    )
  rng = np.random.default_rng(seed)
  # Photos drawn in proportion to their crop positions: every position is equally likely.
  which = rng.choice(len(photos), size=count, p=positions / positions.sum())
  heights, widths = (np.array([p.shape[i] - size + 1 for p in photos])[which] for i in (0, 1))
  offsets = np.stack([which, rng.integers(0, heights), rng.integers(0, widths)], axis=1)
  return PatchSource(photos, offsets, size), which.astype(np.int32)


def skimage_patches(
  *, seed: int = 0, image_size: int | None = None, num_train: int = 8192, num_test: int = 1024
) -> Raw:
  """Random RGB crops of scikit-image's bundled photos (crops are cut on access, not stored).

  Train crops come from astronaut, coffee, rocket and motorcycle (left view), test crops from
  chelsea; labels are the photo's index in its split (there are no classes).

  Args:
    seed: seeds the training crops; test crops are fixed.
    image_size: crop side (64 if None): 64 for the offline CelebA stand-in, 33 for SRCNN.
    num_train: number of training crops.
    num_test: number of test crops.
  """
  size = image_size or 64
  train = _patches(_TRAIN_PHOTOS, size, num_train, seed)
  return Raw(train, _patches(_TEST_PHOTOS, size, num_test, _TEST_SEED), None)


@dataclasses.dataclass(frozen=True)
class TfdsColumn:
  """One feature of a tfds random-access data source, gathered by index arrays."""

  source: Any
  key: str

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: np.ndarray) -> Any:
    values = [r[self.key] for r in self.source.__getitems__(np.asarray(index).tolist())]
    shapes = {np.shape(v) for v in values}
    # Images of several sizes (some catalog datasets) stay a list, for `train.data` to fit.
    return np.stack(values) if len(shapes) == 1 else values


def tfds_builder(name: str, data_dir: str | None):
  """Returns a prepared, random-access tfds builder, or fails at once saying how to prepare it."""
  import tensorflow_datasets as tfds  # Deferred: importing tfds takes about a second.

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
      f"tfds has no dataset {name!r}; see https://www.tensorflow.org/datasets/catalog."
    ) from e
  build = f"tfds build {name} --file_format=array_record --data_dir={builder.data_dir_root}"
  if not builder.is_prepared():
    manual = builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    raise FileNotFoundError(
      f"tfds dataset {name!r} is not prepared in {builder.data_dir} and this code never downloads. "
      f"On a machine with internet and `pip install tensorflow tensorflow-datasets` (building "
      f"needs TensorFlow, reading here does not), run `{build}` and copy the resulting {name}/ "
      f"folder into {builder.data_dir_root} here"
      + (f"; the build needs files placed by hand first: {manual.strip()}" if manual else ".")
    )
  if builder.info.file_format.value not in ("array_record", "parquet"):
    raise FileNotFoundError(
      f"tfds dataset {name!r} in {builder.data_dir} is stored as {builder.info.file_format.value}, "
      f"which only TensorFlow reads. Rebuild it with `{build}`, or convert it with `tfds "
      f"convert_format --dataset_dir={builder.data_dir} --out_file_format=array_record` (both "
      "need TensorFlow installed where they run)."
    )
  return builder


def tfds_dataset(
  name: str,
  *,
  seed: int = 0,
  image_size: int | None = None,
  data_dir: str | None = None,
  train_split: str = "train",
  test_split: str = "test",
  image_key: str = "image",
  label_key: str = "label",
) -> Raw:
  """A tfds dataset prepared as array_record in `data_dir`, read by random access without TF.

  Args:
    name: tfds catalog (or registered) name, e.g. "mnist", "cifar10", "celeb_a".
    seed: unused (tfds splits are fixed).
    image_size: unused (resizing is `train.data`'s).
    data_dir: tfds data folder; None for tfds' default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    train_split: tfds split spec for training, e.g. "train" or "train[:90%]".
    test_split: tfds split spec for testing, e.g. "test" or "validation".
    image_key: image feature.
    label_key: class-label feature; labels are None if the dataset has no such feature.
  """
  del seed, image_size
  import tensorflow_datasets as tfds

  builder = tfds_builder(name, data_dir)
  features = builder.info.features
  if image_key not in features:
    raise ValueError(
      f"tfds {name!r} has no feature {image_key!r}; pass image_key= one of {list(features)}."
    )
  labelled = label_key in features
  # Labels are read through a source that leaves images encoded, so they cost no image decoding.
  skip = {image_key: tfds.decode.SkipDecoding()}

  def split(spec: str) -> tuple[Any, Any]:
    images = TfdsColumn(builder.as_data_source(split=spec), image_key)
    labels = TfdsColumn(builder.as_data_source(split=spec, decoders=skip), label_key)
    return images, labels if labelled else None

  num_classes = getattr(features[label_key], "num_classes", None) if labelled else None
  return Raw(split(train_split), split(test_split), num_classes)
