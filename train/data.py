"""The data layer of every trainer: named datasets behind one random-access interface, and
deterministic, resumable, multi-host batching.

A batch is a dict of numpy arrays (a pytree): "image" float32 `[B, H, W, C]` in [0, 1] and
"label" int32 `[B]` (-1 where a dataset has no labels). Examples stay uint8 (or on disk, for tfds)
until a batch is gathered, so no dataset is ever held as float32. Usage:

  ds = data.load("mnist_embedded", image_size=32)  # 28x28 digits zero-padded to 32x32.
  epoch, start = divmod(step, data.steps_per_epoch(ds.train, batch_size=64))
  for batch in data.batches(ds.train, batch_size=64, seed=0, epoch=epoch, start=start):
    ...  # Resumed from a checkpoint at `step`, this is the order the uninterrupted run saw.
  for batch, mask in data.eval_batches(ds.test, batch_size=100):
    ...  # mask is False on the padding of the last batch.
"""

import dataclasses
import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from train import datasets

# name -> loader(*, seed, image_size, **options) -> datasets.Raw. Any prepared tfds dataset is
# also available as "tfds:<name>" (options data_dir, train_split, test_split, image_key, label_key).
DATASETS: dict[str, Callable[..., datasets.Raw]] = {
  "mnist_embedded": datasets.mnist_embedded,  # 9,000 / 1,000 real MNIST digits, shipped.
  "fashion_mnist_debian": datasets.fashion_mnist_debian,  # 60,000 / 10,000, apt package.
  "skimage_patches": datasets.skimage_patches,  # RGB crops of scikit-image's photos.
}
TFDS_PREFIX = "tfds:"
# ITU-R 601-2 luma, the weights of `perceptual.rgb_to_grey` (a test checks they agree). Applied
# in numpy: the JAX function would run op by op on the accelerator from the prefetch thread
# (measured 30-90 ms per 256x64x64 batch on CPU, against 1 ms here).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
Batch = dict[str, np.ndarray]  # {"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B]}


def preprocess(images: Any, *, image_size: int | None, channels: int | None) -> np.ndarray:
  """Raw uint8 images to float32 `[k, image_size, image_size, channels]` in [0, 1].

  Images smaller than `image_size` on both sides are zero-padded around the centre (MNIST 28 ->
  32, as Czolbe et al. 2020); larger ones are centre-cropped to a square and resized (bicubic,
  antialiased when shrinking), e.g. CelebA 178x218 -> 178x178 -> 64x64. Grey becomes RGB by
  repetition, RGB becomes grey by ITU-R 601-2 luma (as `perceptual.rgb_to_grey`).

  Args:
    images: uint8 `[k, h, w, c]`, or a list of `[h, w, c]` of several sizes.
    image_size: output side; None keeps the size.
    channels: 1 or 3; None keeps the channels.

  Returns:
    float32 `[k, H, W, C]` in [0, 1].
  """
  if isinstance(images, list):
    if image_size is None and len({x.shape for x in images}) > 1:
      raise ValueError("The images of this dataset differ in size; pass image_size= to fit them.")
    images = np.stack([_fit(x, image_size) for x in images])
  images = _fit(np.asarray(images), image_size)
  if images.dtype != np.uint8:
    raise ValueError(f"Raw images must be uint8, got {images.dtype}.")
  x = images.astype(np.float32) / 255
  if channels is None or channels == x.shape[-1]:
    return x
  if (x.shape[-1], channels) == (1, 3):
    return np.repeat(x, 3, axis=-1)
  if (x.shape[-1], channels) == (3, 1):
    return x @ _LUMA[:, None]
  raise ValueError(f"Cannot convert {x.shape[-1]} channels to {channels}; use channels=1 or 3.")


def _fit(images: np.ndarray, size: int | None) -> np.ndarray:
  """Pads, crops or resizes uint8 `[..., h, w, c]` to `[..., size, size, c]`."""
  h, w, c = images.shape[-3:]
  if size is None or (h, w) == (size, size):
    return images
  lead = images.shape[:-3]
  if h <= size and w <= size:
    top, left = (size - h) // 2, (size - w) // 2
    pad = [(0, 0)] * len(lead) + [(top, size - h - top), (left, size - w - left), (0, 0)]
    return np.pad(images, pad)
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  images = images[..., top : top + side, left : left + side, :].reshape(-1, side, side, c)
  # PIL widens the bicubic kernel by the scale factor when shrinking, so shrinking does not alias.
  resized = [
    np.asarray(
      Image.fromarray(x.squeeze(-1) if c == 1 else x).resize((size, size), Image.Resampling.BICUBIC)
    )
    for x in images
  ]
  return np.stack(resized).reshape(*lead, size, size, c)


@dataclasses.dataclass(frozen=True)
class Split:
  """A random-access split: `len(split)` examples, `split.gather(index)` -> a batch dict.

  Attributes:
    images: raw uint8 examples, anything with `len()` that gathers `[k, h, w, c]` by an int index
      array: a numpy array, `datasets.PatchSource`, `datasets.TfdsColumn` (tfds on disk).
    labels: the same for int labels, or None.
    image_size: output side (see `preprocess`); None keeps the raw size.
    channels: output channels 1 or 3; None keeps the raw channels.
  """

  images: Any
  labels: Any | None
  image_size: int | None = None
  channels: int | None = None

  def __len__(self) -> int:
    return len(self.images)

  def gather(self, index: Any) -> Batch:
    """Returns {"image": float32 `[k, H, W, C]`, "label": int32 `[k]`} at the int array `index`."""
    index = np.asarray(index, np.int64)
    images = preprocess(self.images[index], image_size=self.image_size, channels=self.channels)
    if self.labels is None:
      labels = np.full(len(index), -1, np.int32)
    else:
      labels = np.asarray(self.labels[index], np.int32)
    return {"image": images, "label": labels}


class _Rows:
  """Rows `index` of a gatherable source (numpy array, tfds column), itself gatherable."""

  def __init__(self, source: Any, index: np.ndarray):
    self.source, self.index = source, index

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, index: np.ndarray) -> Any:
    return self.source[self.index[index]]


def channel_mean(split: Split, *, count: int = 4096) -> tuple[float, ...]:
  """Per-channel mean of the first `count` images of a split (where generators start)."""
  images = split.gather(np.arange(min(len(split), count)))["image"]
  return tuple(float(v) for v in np.mean(images, axis=(0, 1, 2), dtype=np.float64))


def subset(split: Split, index: np.ndarray) -> Split:
  """The examples of `split` at the int array `index`, in that order (gathered lazily)."""
  index = np.asarray(index, np.int64)
  labels = None if split.labels is None else _Rows(split.labels, index)
  return dataclasses.replace(split, images=_Rows(split.images, index), labels=labels)


def head(split: Split, n: int | None) -> Split:
  """The first `n` examples of `split` (all of it when `n` is None or not smaller)."""
  if n is None or n >= len(split):
    return split
  if n <= 0:
    raise ValueError(f"the number of examples must be positive, got {n}.")
  return subset(split, np.arange(n))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A loaded dataset: `image_shape` is `(H, W, C)` after preprocessing."""

  name: str
  train: Split
  test: Split
  image_shape: tuple[int, int, int]
  num_classes: int | None


def load(
  name: str, *, image_size: int | None = None, channels: int | None = None, seed: int = 0, **options
) -> Dataset:
  """Loads a dataset of `DATASETS`, or a prepared tfds dataset as "tfds:<name>".

  Args:
    name: a key of `DATASETS`, or "tfds:<name>" (e.g. "tfds:celeb_a") for a tfds dataset prepared
      with file_format=array_record; one that is not prepared fails at once (nothing downloads).
    image_size: output side (see `preprocess`); None keeps the native size (crop side 64 for
      skimage_patches).
    channels: 1 or 3; None keeps the native channels.
    seed: seeds what a dataset draws at random (skimage_patches training crops); test splits and
      the embedded MNIST split are fixed.
    **options: the loader's own options (e.g. num_test, num_train, data_dir, test_split; see
      `train.datasets`).

  Returns:
    The `Dataset`.
  """
  if name.startswith(TFDS_PREFIX):
    loader = functools.partial(datasets.tfds_dataset, name.removeprefix(TFDS_PREFIX))
  elif name in DATASETS:
    loader = DATASETS[name]
  else:
    raise ValueError(
      f"Unknown dataset {name!r}; valid: {', '.join(DATASETS)}, or '{TFDS_PREFIX}<name>' for a "
      "prepared tensorflow-datasets dataset (e.g. tfds:mnist, tfds:cifar10, tfds:celeb_a)."
    )
  if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
    raise ValueError(f"image_size must be a positive int or None, got {image_size!r}.")
  if channels not in (None, 1, 3):
    raise ValueError(f"channels must be 1 (grey), 3 (RGB) or None (native), got {channels!r}.")
  raw = loader(seed=seed, image_size=image_size, **options)
  train, test = (Split(*raw_split, image_size, channels) for raw_split in (raw.train, raw.test))
  image_shape = train.gather([0])["image"].shape[1:]
  return Dataset(name, train, test, image_shape, raw.num_classes)


def _local_size(batch_size: int, process_index: int, process_count: int) -> int:
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(
      f"batch_size {batch_size} must be a positive multiple of process_count {process_count}; "
      "it is the global batch, split evenly over processes."
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}.")
  return batch_size // process_count


def steps_per_epoch(split: Split, *, batch_size: int) -> int:
  """Number of full global batches `batches` yields per epoch (the remainder is dropped)."""
  return len(split) // batch_size


def batches(
  split: Split,
  *,
  batch_size: int,
  seed: int,
  epoch: int,
  start: int = 0,
  stop: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
  prefetch: int = 2,
) -> Iterator[Batch]:
  """Shuffled training batches of one epoch, deterministic from `(seed, epoch)`.

  Every global batch is full (the `len(split) % batch_size` examples a shuffle leaves over are
  dropped, a different set each epoch), so shapes never change under `jit`. With several processes
  (hosts), each yields only its contiguous `batch_size // process_count` rows of every global batch:
  `jax.make_array_from_process_local_data` assembles them in process order.

  Args:
    split: the split.
    batch_size: global batch size, a multiple of `process_count`.
    seed: shuffling seed.
    epoch: epoch number; each epoch has its own order.
    start: global batches of this epoch already consumed (resumption): yields batches
      `start, ..., stop - 1` of the epoch, exactly those the uninterrupted run would.
    stop: end of the epoch's batches to yield (e.g. at a step budget); None for all,
      `steps_per_epoch(split, batch_size=batch_size)`.
    process_index: this process (`jax.process_index()`).
    process_count: number of processes (`jax.process_count()`).
    prefetch: batches prepared ahead by a background thread; 0 prepares them on demand.

  Returns:
    An iterator of batch dicts with `batch_size // process_count` rows.
  """
  local = _local_size(batch_size, process_index, process_count)
  steps = steps_per_epoch(split, batch_size=batch_size)
  if steps == 0:
    raise ValueError(f"The split has {len(split)} examples, fewer than batch_size {batch_size}.")
  stop = steps if stop is None else stop
  if not 0 <= start <= stop <= steps:
    raise ValueError(
      f"Need 0 <= start <= stop <= {steps} (batches per epoch), got start={start}, stop={stop}."
    )
  order = np.random.default_rng((seed, epoch)).permutation(len(split))
  offsets = (s * batch_size + process_index * local for s in range(start, stop))
  return _prefetch((split.gather(order[o : o + local]) for o in offsets), prefetch)


def eval_batches(
  split: Split,
  *,
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  prefetch: int = 2,
) -> Iterator[tuple[Batch, np.ndarray]]:
  """Every example once, in stored order, in `ceil(len(split) / batch_size)` global batches.

  The last global batch is padded to full size (repeating example 0) with `mask` False on the
  padding, so shapes stay fixed under `jit`; reduce metrics as `sum(value * mask) / sum(mask)`,
  both sums global: a process's share of the padding differs from the others'. Processes split
  each global batch as in `batches`. Each batch also holds "index", int32 `[local]`: the position
  in `split` of the example in each row (0 on the padding), from which an evaluation draws that
  example's randomness, so that it does not depend on the example's row (`loop.example_keys`).

  Args:
    split: the split.
    batch_size: global batch size, a multiple of `process_count`.
    process_index: this process (`jax.process_index()`).
    process_count: number of processes (`jax.process_count()`).
    prefetch: batches prepared ahead by a background thread; 0 prepares them on demand.

  Returns:
    An iterator of `(batch, mask)`: a batch dict and bool `[local]`, `local = batch_size //
    process_count` rows each.
  """
  local = _local_size(batch_size, process_index, process_count)
  steps = -(-len(split) // batch_size)
  offsets = (s * batch_size + process_index * local for s in range(steps))
  return _prefetch((_padded(split, np.arange(o, o + local)) for o in offsets), prefetch)


def _padded(split: Split, index: np.ndarray) -> tuple[Batch, np.ndarray]:
  valid = index < len(split)
  index = np.where(valid, index, 0)
  return {**split.gather(index), "index": index.astype(np.int32)}, valid


def _prefetch(items: Iterable[Any], size: int) -> Iterator[Any]:
  """Yields `items`, computed `size` ahead by a daemon thread that stops when the consumer does."""
  if size <= 0:
    return iter(items)
  ready, stop, end = queue.Queue(maxsize=size), threading.Event(), object()

  def put(item: Any) -> None:
    while not stop.is_set():
      try:
        return ready.put(item, timeout=0.1)
      except queue.Full:
        pass

  def work() -> None:
    try:
      for item in items:
        put(item)
        if stop.is_set():
          return
      put(end)
    except Exception as e:  # Re-raised in the consumer, where it belongs.
      put(e)

  def consume() -> Iterator[Any]:
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
      while (item := ready.get()) is not end:
        if isinstance(item, Exception):
          raise item
        yield item
    finally:
      # Joined, not abandoned: a thread still preparing a batch when the interpreter exits can
      # abort it from inside native code (PIL, JAX).
      stop.set()
      worker.join()

  return consume()
