"""2AFC data: BAPPS (human judgements, by hand download) and a SYNTHETIC stand-in generated here.

A record is a reference, two distortions p0, p1 and `judge`, the fraction of raters who judged p1
closer to the reference (the convention of `perceptual.twoafc`). Batches are dicts of numpy
arrays: "image" (the reference), "p0", "p1" float32 `[B, H, W, C]` in [0, 1], "judge" float32
`[B]`, "category" int32 `[B]` (an index into the dataset's `categories`) and "label" (= category,
for `train.data`'s batching). Splits are random access (`len`, `gather(index)`), so
`train.data.batches` and `train.loop.fit` batch them like any image dataset.

BAPPS (Zhang et al. 2018) is not downloadable from here. Get it on a machine with internet:

    wget https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/twoafc_train.tar.gz
    wget https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/twoafc_val.tar.gz
    mkdir -p DIR/2afc
    tar -xzf twoafc_train.tar.gz -C DIR/2afc && tar -xzf twoafc_val.tar.gz -C DIR/2afc

(the URLs of `scripts/download_dataset.sh` in github.com/richzhang/PerceptualSimilarity), then
pass `data_dir=DIR` (read directly, PNG by PNG), or prepare the tfds builder `bapps2afc` from it
(`bapps_builder(data_dir=..., manual_dir=DIR).download_and_prepare()`, array_record, no TF).

The SYNTHETIC data has no human judgements at all: its `judge` comes from a stated rule on the
distortion strengths (see `synthetic`). It exists for tests and offline runs; every name, log and
table that shows it says "synthetic".
"""

import dataclasses
import functools
import io
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageFilter

from perceptual import twoafc
from train import data, datasets

BAPPS_CATEGORIES = {
  "train": ("traditional", "cnn", "mix"),
  "val": ("traditional", "cnn", "superres", "deblur", "color", "frameinterp"),
}
BAPPS_URL = "https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/"
SYNTHETIC_FAMILIES = ("noise", "blur", "jpeg", "color", "contrast")
SYNTHETIC_CATEGORIES = (*SYNTHETIC_FAMILIES, "mixed")
# The synthetic rule: P(p1 judged closer) = sigmoid((q0 - q1) / SYNTHETIC_TEMPERATURE), where q in
# [0, 1] is the strength of a distortion on its family's scale (`_distort`). The scales are ours,
# chosen so that equal q looks roughly equally severe to us; they are not measured on people.
SYNTHETIC_TEMPERATURE = 0.08


@dataclasses.dataclass(frozen=True)
class Split:
  """A random-access 2AFC split. `ref`, `p0`, `p1`: uint8 `[k, h, w, 3]` gatherers (see
  `train.data.Split`); `judge` float `[N]`; `category` int `[N]`."""

  ref: Any
  p0: Any
  p1: Any
  judge: np.ndarray
  category: np.ndarray
  channels: int | None = None

  def __len__(self) -> int:
    return len(self.judge)

  def gather(self, index: Any) -> dict[str, np.ndarray]:
    index = np.asarray(index, np.int64)
    prep = lambda s: data.preprocess(s[index], image_size=None, channels=self.channels)
    category = np.asarray(self.category[index], np.int32)
    return {
      "image": prep(self.ref),
      "p0": prep(self.p0),
      "p1": prep(self.p1),
      "judge": np.asarray(self.judge[index], np.float32),
      "category": category,
      "label": category,
    }


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A 2AFC dataset: `categories[i]` names category index i; `synthetic` marks made-up judges."""

  name: str
  train: Split
  test: Split
  image_shape: tuple[int, int, int]
  categories: tuple[str, ...]
  synthetic: bool
  num_classes: int | None = None


def _distort(image: np.ndarray, family: str, q: float, rng: np.random.Generator) -> np.ndarray:
  """One distortion of a uint8 `[h, w, 3]` image at strength q in [0, 1] (0: none)."""
  x = image.astype(np.float32) / 255
  if family == "noise":  # white Gaussian noise, sigma up to 0.1
    x = x + rng.normal(0, 0.1 * q, x.shape)
  elif family == "blur":  # Gaussian blur, radius up to 2 px
    pil = Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=2.0 * q))
    return np.asarray(pil)
  elif family == "jpeg":  # JPEG quality 95 down to 5
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(round(95 - 90 * q)))
    return np.asarray(Image.open(buffer).convert("RGB"))
  elif family == "color":  # constant RGB shift of norm up to 0.25 in a random direction
    direction = rng.normal(size=3)
    x = x + 0.25 * q * direction / np.linalg.norm(direction)
  elif family == "contrast":  # contrast towards the image mean, down to 40 %
    x = x.mean() + (1 - 0.6 * q) * (x - x.mean())
  else:
    raise ValueError(f"Unknown distortion {family!r}; use one of {SYNTHETIC_FAMILIES}.")
  return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def synthetic_records(
  photos: tuple[str, ...], count: int, *, size: int, seed: int
) -> tuple[np.ndarray, ...]:
  """SYNTHETIC 2AFC records `(ref, p0, p1, judge, category)` from crops of scikit-image photos.

  Half the records pair two strengths of one distortion family (category = the family), half two
  different families ("mixed"). Strengths q ~ U(0.1, 1). The judge is the rule's probability
  `sigmoid((q0 - q1) / SYNTHETIC_TEMPERATURE)` itself (an infinite panel of identical raters), so
  the best possible 2AFC score is `mean(max(judge, 1 - judge))`.
  """
  source, _ = datasets._patches(photos, size, count, seed)
  rng = np.random.default_rng((seed, 2))
  ref = source[np.arange(count)]
  p0, p1 = np.empty_like(ref), np.empty_like(ref)
  judge, category = np.empty(count, np.float32), np.empty(count, np.int32)
  families = len(SYNTHETIC_FAMILIES)
  for i in range(count):
    f0 = rng.integers(families)
    f1 = f0 if rng.random() < 0.5 else (f0 + rng.integers(1, families)) % families
    q0, q1 = (float(q) for q in rng.uniform(0.1, 1.0, 2))
    p0[i] = _distort(ref[i], SYNTHETIC_FAMILIES[f0], q0, rng)
    p1[i] = _distort(ref[i], SYNTHETIC_FAMILIES[f1], q1, rng)
    judge[i] = 1 / (1 + np.exp(-(q0 - q1) / SYNTHETIC_TEMPERATURE))
    category[i] = f0 if f0 == f1 else families
  return ref, p0, p1, judge, category


@functools.cache
def _synthetic_cached(num_train: int, num_test: int, size: int, seed: int):
  # Train crops from astronaut, coffee, rocket, motorcycle; held-out crops from chelsea only.
  train = synthetic_records(datasets._TRAIN_PHOTOS, num_train, size=size, seed=seed)
  test = synthetic_records(datasets._TEST_PHOTOS, num_test, size=size, seed=datasets._TEST_SEED)
  return train, test


def _bapps_folder(root: pathlib.Path, split: str) -> tuple[Any, ...] | None:
  """BAPPS extracted under root/2afc/<split>/<category>/{ref,p0,p1,judge}, or None."""
  base = root / "2afc" / split
  if not all((base / c / "judge").is_dir() for c in BAPPS_CATEGORIES[split]):
    return None
  paths = {k: [] for k in ("ref", "p0", "p1", "judge")}
  category = []
  for i, c in enumerate(BAPPS_CATEGORIES[split]):
    names = sorted(p.stem for p in (base / c / "judge").glob("*.npy"))
    for key in paths:
      ext = ".npy" if key == "judge" else ".png"
      paths[key] += [base / c / key / f"{n}{ext}" for n in names]
    category += [i] * len(names)
  judge = np.array([float(np.load(p).reshape(-1)[0]) for p in paths["judge"]], np.float32)
  return *(PngSource(tuple(paths[k])) for k in ("ref", "p0", "p1")), judge, np.array(category)


@dataclasses.dataclass(frozen=True)
class PngSource:
  """RGB PNG files gathered by index arrays as uint8 `[k, 64, 64, 3]` (resized if not 64)."""

  paths: tuple[pathlib.Path, ...]

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: np.ndarray) -> np.ndarray:
    load = lambda p: Image.open(p).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    return np.stack([np.asarray(load(self.paths[i])) for i in np.asarray(index).reshape(-1)])


def _missing_bapps(data_dir: str | None) -> FileNotFoundError:
  where = data_dir or "$BAPPS_DIR"
  return FileNotFoundError(
    f"BAPPS 2AFC not found under {where}/2afc/{{train,val}}/<category>/ and nothing downloads "
    f"here. On a machine with internet: `wget {BAPPS_URL}twoafc_train.tar.gz {BAPPS_URL}"
    f"twoafc_val.tar.gz`, then `mkdir -p {where}/2afc && tar -xzf twoafc_train.tar.gz -C "
    f"{where}/2afc && tar -xzf twoafc_val.tar.gz -C {where}/2afc` (the URLs of "
    "richzhang/PerceptualSimilarity's scripts/download_dataset.sh), and pass data_dir= that "
    "folder (or set BAPPS_DIR). Offline, use the SYNTHETIC stand-in: --data=synthetic."
  )


def load(
  name: str,
  *,
  channels: int | None = 3,
  seed: int = 0,
  num_train: int = 2000,
  num_test: int = 500,
  size: int = 64,
  data_dir: str | None = None,
) -> Dataset:
  """Loads "synthetic" (generated, SYNTHETIC judges) or "bapps" (BAPPS 2AFC, train / val).

  Args:
    name: "synthetic" or "bapps".
    channels: 1 (grey, ITU-R 601 luma) or 3; None keeps RGB.
    seed: seeds the synthetic training records (held-out ones are fixed).
    num_train: synthetic training records.
    num_test: synthetic held-out records.
    size: synthetic crop side (BAPPS patches are 64).
    data_dir: BAPPS folder holding 2afc/ (default $BAPPS_DIR), or a tfds data dir in which
      `bapps2afc` is prepared.

  Returns:
    The `Dataset`; test is BAPPS' val split.
  """
  if name == "synthetic":
    (train, test), cats = _synthetic_cached(num_train, num_test, size, seed), SYNTHETIC_CATEGORIES
  elif name == "bapps":
    data_dir = data_dir or os.environ.get("BAPPS_DIR")
    root = pathlib.Path(data_dir) if data_dir else None
    train, test = (_bapps_folder(root, s) if root else None for s in ("train", "val"))
    if train is None or test is None:
      train, test = _bapps_tfds(data_dir)
    cats = tuple(dict.fromkeys(BAPPS_CATEGORIES["train"] + BAPPS_CATEGORIES["val"]))
    # Indices into the union of category names, so train and val share one naming.
    train = (*train[:4], np.array([cats.index(BAPPS_CATEGORIES["train"][c]) for c in train[4]]))
    test = (*test[:4], np.array([cats.index(BAPPS_CATEGORIES["val"][c]) for c in test[4]]))
  else:
    raise ValueError(f"Unknown 2AFC data {name!r}; use 'synthetic' (offline) or 'bapps'.")
  train, test = Split(*train, channels=channels), Split(*test, channels=channels)
  shape = train.gather([0])["image"].shape[1:]
  return Dataset(f"{name} (SYNTHETIC judges)" if name == "synthetic" else name, train, test,
                 shape, cats, name == "synthetic")  # fmt: skip


@functools.cache
def bapps_builder_class() -> type:
  """The tfds builder `bapps2afc` (registered on first call; tfds imports take a second)."""
  import tensorflow_datasets as tfds

  class Bapps2afc(tfds.core.GeneratorBasedBuilder):
    """BAPPS 2AFC (Zhang et al. 2018): splits train_<category>, val_<category>."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {BAPPS_URL}twoafc_train.tar.gz and twoafc_val.tar.gz, and extract both into "
      "<manual_dir>/2afc/ (giving 2afc/train/<category>/{ref,p0,p1,judge} and 2afc/val/...)."
    )

    def _info(self):
      image = tfds.features.Image(shape=(64, 64, 3), encoding_format="png")
      return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
          {"ref": image, "p0": image, "p1": image, "judge": np.float32}
        ),
        homepage="https://richzhang.github.io/PerceptualSimilarity/",
      )

    def _split_generators(self, dl_manager):
      root = pathlib.Path(dl_manager.manual_dir)
      return {
        f"{s}_{c}": self._generate_examples(root / "2afc" / s / c)
        for s, cats in BAPPS_CATEGORIES.items()
        for c in cats
      }

    def _generate_examples(self, folder):
      for p in sorted((folder / "judge").glob("*.npy")):
        images = {k: np.asarray(PngSource((folder / k / f"{p.stem}.png",))[[0]][0]) for k in
                  ("ref", "p0", "p1")}  # fmt: skip
        yield p.stem, {**images, "judge": np.float32(np.load(p).reshape(-1)[0])}

  return Bapps2afc


def bapps_builder(*, data_dir: str | None = None, manual_dir: str | None = None):
  """A `bapps2afc` builder (array_record); `.download_and_prepare()` reads the manual files."""
  import tensorflow_datasets as tfds

  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder = bapps_builder_class()(data_dir=data_dir, file_format="array_record")
  builder.download_config = config
  return builder


def _bapps_tfds(data_dir: str | None) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
  import tensorflow_datasets as tfds

  try:
    builder = bapps_builder_class()(data_dir=data_dir)
  except Exception as e:  # tfds raises several types for a missing or unreadable folder
    raise _missing_bapps(data_dir) from e
  if not builder.is_prepared():
    raise _missing_bapps(data_dir)

  def split(s):
    parts = [builder.as_data_source(split=f"{s}_{c}") for c in BAPPS_CATEGORIES[s]]
    columns = [datasets.TfdsColumn(_Concat(tuple(parts)), k) for k in ("ref", "p0", "p1")]
    # Judges are read through sources that leave the images encoded (no PNG decoding).
    skip = {k: tfds.decode.SkipDecoding() for k in ("ref", "p0", "p1")}
    judges = [builder.as_data_source(split=f"{s}_{c}", decoders=skip) for c in BAPPS_CATEGORIES[s]]
    judge = np.concatenate([[r["judge"] for r in p] for p in judges]).astype(np.float32)
    category = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    return *columns, judge, category

  return split("train"), split("val")


@dataclasses.dataclass(frozen=True)
class _Concat:
  """Several tfds data sources read as one (`__getitems__` by global index)."""

  parts: tuple[Any, ...]

  def __len__(self) -> int:
    return sum(len(p) for p in self.parts)

  def __getitems__(self, index: list[int]) -> list[Any]:
    ends = np.cumsum([len(p) for p in self.parts])
    out = []
    for i in index:
      k = int(np.searchsorted(ends, i, side="right"))
      out.append(self.parts[k][i - (ends[k - 1] if k else 0)])
    return out


def distances(
  fn: Callable[[jax.Array, jax.Array], jax.Array], split: Split, *, batch_size: int = 50
) -> tuple[np.ndarray, np.ndarray]:
  """`(d0, d1)`, `[N]` each: `fn(ref, p0)` and `fn(ref, p1)` over a split, in stored order."""
  jitted = jax.jit(fn)
  d0, d1 = [], []
  for batch, mask in data.eval_batches(split, batch_size=batch_size):
    d0.append(np.asarray(jitted(batch["image"], batch["p0"]))[mask])
    d1.append(np.asarray(jitted(batch["image"], batch["p1"]))[mask])
  return np.concatenate(d0), np.concatenate(d1)


def category_scores(
  d0: np.ndarray, d1: np.ndarray, split: Split, categories: tuple[str, ...]
) -> dict[str, float]:
  """2AFC score per category and their mean for the distances of one metric on a split."""
  per_record = np.asarray(twoafc.score(d0, d1, split.judge))
  return twoafc.score_by_category(per_record, split.category, names=categories)
