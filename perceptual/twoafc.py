"""Two-alternative forced choice (2AFC): predicted judgements, the fitting loss and the score.

A 2AFC record is a reference `x0` (BAPPS: `ref`), two distortions `p0`, `p1` of it and `h`, the
fraction of human raters who judged `p1` closer to the reference. Metrics give the distances
`d0 = d(x0, p0)` and `d1 = d(x0, p1)`, with the reference as the metric's first argument (the
target that Watson's masking is computed from). Every function here uses this convention:

- `h` is the probability of the event "p1 is judged closer", i.e. of the image scored by `d1`;
- `predicted_judgement` is the model's probability of that same event: it rises with `d0 - d1`
  (p1 looks closer when p0 is farther), as in Czolbe et al.'s `WeightedSigmoidLoss`;
- `score` credits a metric with `h` when it ranks p1 closer (`d1 < d0`), `1 - h` when it ranks p0
  closer, and 1/2 on ties: the expected agreement with a random rater (BAPPS' `compute_accuracy`).

Parameters fitted on 2AFC data are saved as flat JSON objects whose keys are those of an entry of
`perceptual/data/watson_weights.json` (nested dicts joined with ".", e.g. "ly.t_tild"), so any
parameter pytree of dicts of arrays round-trips: `save_params` / `load_params`.

References:
  Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep Features as a
  Perceptual Metric", CVPR 2018 (BAPPS, the 2AFC score). https://arxiv.org/abs/1801.03924
  Czolbe, Krause, Cox, Igel, "A Loss Function for Generative Neural Networks Based on Watson's
  Perceptual Model", NeurIPS 2020 (the weighted-sigmoid fitting loss).
  https://arxiv.org/abs/2006.15057
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Keeps log() of a saturated sigmoid finite; 1e-7 matches torch's BCELoss clamp of log at -100
# closely enough for float32 while leaving gradients of ordinary predictions untouched.
_PROB_EPS = 1e-7


def _check_pair(d0: jax.Array, d1: jax.Array, name: str) -> tuple[jax.Array, jax.Array]:
  d0, d1 = jnp.asarray(d0, jnp.float32), jnp.asarray(d1, jnp.float32)
  if d0.shape != d1.shape or d0.ndim != 1:
    raise ValueError(
      f"{name}: d0 and d1 must be [B] distances of the same records, got shapes {d0.shape} and "
      f"{d1.shape}. Score each distortion of a batch with one metric call."
    )
  return d0, d1


def predicted_judgement(d0: jax.Array, d1: jax.Array, g: jax.Array) -> jax.Array:
  """Predicted probability that raters judge `p1` closer: `sigmoid(exp(g) (d0 - d1) / (d0 + d1))`.

  The normalised difference is 0 where `d0 + d1 == 0` (both distortions identical to the
  reference), giving 1/2 there with finite (zero) gradients, as the reference's `torch.where`.

  Args:
    d0: `[B]` distances `d(x0, p0)`, >= 0.
    d1: `[B]` distances `d(x0, p1)`, >= 0.
    g: scalar log-slope of the sigmoid (fitted with the metric's parameters).

  Returns:
    `[B]` probabilities in (0, 1).
  """
  d0, d1 = _check_pair(d0, d1, "predicted_judgement")
  total = d0 + d1
  safe = jnp.where(total > 0, total, 1.0)  # both branches of where are differentiated
  normalised = jnp.where(total > 0, (d0 - d1) / safe, 0.0)
  return jax.nn.sigmoid(jnp.exp(g) * normalised)


def bce_loss(d0: jax.Array, d1: jax.Array, h: jax.Array, g: jax.Array) -> jax.Array:
  """Binary cross-entropy of `predicted_judgement` against the human fraction `h`, `[B]`.

  Args:
    d0: `[B]` distances to p0.
    d1: `[B]` distances to p1.
    h: `[B]` fraction of raters who judged p1 closer, in [0, 1].
    g: scalar log-slope.

  Returns:
    `[B]` losses (the caller averages; Czolbe et al. average over the batch).
  """
  p = jnp.clip(predicted_judgement(d0, d1, g), _PROB_EPS, 1 - _PROB_EPS)
  h = jnp.asarray(h, p.dtype)
  return -(h * jnp.log(p) + (1 - h) * jnp.log1p(-p))


def score(d0: jax.Array, d1: jax.Array, h: jax.Array) -> jax.Array:
  """Per-record 2AFC score `(d0 < d1)(1 - h) + (d1 < d0) h + (d0 == d1) / 2`, `[B]` in [0, 1].

  Its mean over a data set is the metric's 2AFC score; a metric that always agrees with the
  majority of raters scores `mean(max(h, 1 - h))`, the ceiling for these judgements.
  """
  d0, d1 = _check_pair(d0, d1, "score")
  h = jnp.asarray(h, jnp.float32)
  return (d0 < d1) * (1 - h) + (d1 < d0) * h + 0.5 * (d0 == d1)


def score_by_category(
  scores: np.ndarray, categories: np.ndarray, *, names: tuple[str, ...] | None = None
) -> dict[str, float]:
  """Mean score per category, plus "mean": the mean over categories (not records), as BAPPS.

  Args:
    scores: `[N]` per-record scores.
    categories: `[N]` int category index (or str name) per record.
    names: names of the int categories; None uses the values as names.

  Returns:
    `{category name: mean score, ..., "mean": mean of the category means}`.
  """
  scores, categories = np.asarray(scores, np.float64), np.asarray(categories)
  if scores.shape != categories.shape:
    raise ValueError(f"scores {scores.shape} and categories {categories.shape} must match.")
  out = {}
  for c in np.unique(categories):
    name = names[int(c)] if names is not None else str(c)
    out[name] = float(np.mean(scores[categories == c]))
  out["mean"] = float(np.mean(list(out.values()))) if out else float("nan")
  return out


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if "." in key:
      raise ValueError(f"save_params: key {key!r} contains '.', which marks nesting; rename it.")
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      array = np.asarray(jax.device_get(value), np.float64)
      flat[prefix + key] = array.tolist() if array.ndim else float(array)
  return flat


def save_params(path: str, params: Mapping[str, Any]) -> str:
  """Writes a pytree of dicts of arrays as flat JSON, keys joined with "." ("ly.t_tild").

  The format of an entry of `perceptual/data/watson_weights.json`; values are written as float64
  decimals (repr round-trips float32 exactly). Returns `path`.
  """
  flat = _flatten(params)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(flat, f, indent=1, sort_keys=True)
  return path


def load_params(path: str, *, like: Any = None) -> dict:
  """Reads `save_params`' JSON back into a pytree of float32 arrays.

  Args:
    path: the JSON file (e.g. `fitted_params.json` of a `python -m train.calibrate` workdir).
    like: optional pytree (e.g. `LOSSES[name].params(channels)`) the result must match in
      structure and shapes; a mismatch fails naming the loss it would not fit. A file may hold
      only some of `like`'s top-level entries (LPIPS fits only its "heads"): each entry it holds
      must match `like`'s entirely, and the others are taken from `like`.

  Returns:
    The nested dict of float32 arrays.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"No parameter file at {path}. Fit one with `python -m train.calibrate --workdir=DIR` "
      "(it writes DIR/fitted_params.json), or pass an existing path."
    )
  with open(path) as f:
    flat = json.load(f)
  tree: dict = {}
  for key, value in flat.items():
    *outer, leaf = key.split(".")
    node = tree
    for part in outer:
      node = node.setdefault(part, {})
    node[leaf] = jnp.asarray(value, jnp.float32)
  if like is not None:
    shapes = lambda t: jax.tree.map(jnp.shape, t)
    rest = {}
    if isinstance(like, Mapping) and set(tree) < set(like):  # a subset of the entries
      rest = {k: v for k, v in like.items() if k not in tree}
      like = {k: like[k] for k in tree}
    if jax.tree.structure(tree) != jax.tree.structure(like) or shapes(tree) != shapes(like):
      raise ValueError(
        f"{path} holds parameters of another form than expected ({shapes(tree)} vs "
        f"{shapes(like)}). Use a file fitted for the same loss and channel count."
      )
    tree = {**rest, **tree}
  return tree
