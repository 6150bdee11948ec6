"""The calling convention of `perceptual`'s public API, checked on every public function.

In the manner of dm_pix's api_test: signatures are read with `inspect.signature`, and each public
function and public method must follow the rule of STYLE.md ("data positional, options
keyword-only after `*`; random keys are named `key`"):

1. Options are keyword-only. Every parameter with a default comes after `*`, so the positional
   parameters are exactly the required inputs: `avg_pool(x, *, factor=2)`, not
   `avg_pool(x, factor=2)`.
2. Arrays come first. A positional parameter annotated as a scalar option (`str`, `int`, `float`,
   `bool`) may not precede a positional array (`jax.Array`, `np.ndarray`).
3. Random keys are named `key`; a second key is named after its use, `<use>_key` (`dropout_key`).
   No `rng`, `prng_key`, `key_...`. A required key is the first parameter, as in `jax.random` and
   dm_pix; an optional one is an option (keyword-only, by 1).
4. No catch-alls: no `*args` or `**kwargs`; every input is named in the signature.

The public API is `perceptual` and each of its modules whose name does not start with `_`: the
names in the module's `__all__`, or else its public names defined in the package. A public class
contributes its public methods and `__call__` (the `Loss` instances of `LOSSES` are covered
through `Loss`); the constructors of record classes (dataclasses) list their fields and are not
checked.
"""

import functools
import importlib
import inspect
import pkgutil
import types
import typing

import jax
import numpy as np
import pytest

import perceptual

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_ARRAYS = (jax.Array, np.ndarray)
_SCALARS = (str, int, float, bool)


def _public_modules() -> list[types.ModuleType]:
  modules = [perceptual]
  for info in pkgutil.iter_modules(perceptual.__path__):
    if not info.name.startswith("_"):
      modules.append(importlib.import_module(f"perceptual.{info.name}"))
  return modules


def _defined_in_package(obj) -> bool:
  return getattr(inspect.unwrap(obj), "__module__", "").startswith("perceptual")


def _public_api() -> dict[str, tuple[object, bool]]:
  """`qualified name -> (callable, is_method)` for every public function and method."""
  api = {}

  def add(fn, is_method):
    target = inspect.unwrap(fn)
    api.setdefault(f"{target.__module__}.{target.__qualname__}", (fn, is_method))

  for module in _public_modules():
    names = getattr(module, "__all__", None)
    if names is None:
      names = [n for n in vars(module) if not n.startswith("_")]
    for name in names:
      obj = getattr(module, name)
      if inspect.ismodule(obj) or not _defined_in_package(obj):
        continue
      if inspect.isclass(obj):
        for attr, member in vars(obj).items():
          if attr.startswith("_") and attr != "__call__":
            continue
          if isinstance(member, staticmethod):
            add(member.__func__, False)
          elif isinstance(member, classmethod):
            add(member.__func__, True)
          elif inspect.isfunction(member):
            add(member, True)
      elif callable(obj):
        add(obj, False)
  return api


_API = _public_api()


def _kinds(annotation) -> tuple[type, ...]:
  """The types an annotation admits (`str | None` -> `(str, NoneType)`)."""
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    return typing.get_args(annotation)
  return (annotation,)


def _is_array(annotation) -> bool:
  return any(isinstance(k, type) and issubclass(k, _ARRAYS) for k in _kinds(annotation))


def _is_scalar_option(annotation) -> bool:
  kinds = [k for k in _kinds(annotation) if k is not type(None)]
  return bool(kinds) and all(k in _SCALARS for k in kinds)


def _is_key(name: str) -> bool:
  return name == "key" or name.endswith("_key")


def _problems(name: str, fn, is_method: bool = False) -> list[str]:
  """What in `fn`'s signature breaks the rule, each naming the function and the parameter."""
  params = list(inspect.signature(fn, eval_str=True).parameters.values())
  if is_method:
    params = params[1:]  # self / cls
  positional = [p for p in params if p.kind in _POSITIONAL]
  found = []
  for p in params:
    if p.kind is inspect.Parameter.VAR_POSITIONAL:
      found.append(f"{name}: `*{p.name}` is a catch-all; name every input in the signature.")
    elif p.kind is inspect.Parameter.VAR_KEYWORD:
      found.append(f"{name}: `**{p.name}` is a catch-all; name every option after `*`.")
    if "rng" in p.name.lower():
      found.append(f"{name}: parameter `{p.name}`: prefer `key` (or `<use>_key`), following JAX.")
    elif "key" in p.name.lower() and not _is_key(p.name):
      found.append(f"{name}: parameter `{p.name}`: name a random key `key` or `<use>_key`.")
  data = ", ".join(q.name for q in positional if q.default is q.empty)
  for p in positional:
    if p.default is not p.empty:
      found.append(
        f"{name}: option `{p.name}={p.default!r}` can be passed positionally; make it "
        f"keyword-only: `({data}{', ' if data else ''}*, {p.name}=...)`."
      )
  for i, p in enumerate(positional):
    if _is_key(p.name) and i > 0:
      found.append(f"{name}: key `{p.name}` must be the first parameter (as in jax.random).")
    if _is_scalar_option(p.annotation):
      later = [q.name for q in positional[i + 1 :] if _is_array(q.annotation)]
      if later:
        found.append(
          f"{name}: `{p.name}: {p.annotation.__name__}` comes before the array `{later[0]}`; "
          "arrays come first, options after `*`."
        )
  return found


def test_the_walk_finds_the_public_api():
  """The walk is not vacuous: it reaches the metrics, the submodules' helpers and `Loss`."""
  for name in (
    "perceptual.structural.ssim",
    "perceptual.filters.avg_pool",
    "perceptual.pretrained.lpips_params",
    "perceptual.watson.watson_dft",
    "perceptual.losses.Loss.__call__",
    "perceptual.losses.Loss.per_image",
    "perceptual.twoafc.score_by_category",
  ):
    assert name in _API, f"{name} is missing from the walked API: {sorted(_API)}"


@pytest.mark.parametrize("name", sorted(_API))
def test_signature_follows_the_convention(name):
  fn, is_method = _API[name]
  problems = _problems(name, fn, is_method)
  if problems:
    pytest.fail("\n".join(problems), pytrace=False)


def _options_positional(x: jax.Array, factor: int = 2) -> jax.Array: ...
def _catch_all(x: jax.Array, *args, **kwargs) -> jax.Array: ...
def _rng(x: jax.Array, *, rng: jax.Array | None = None) -> jax.Array: ...
def _key_prefix(x: jax.Array, *, key_dropout: jax.Array | None = None) -> jax.Array: ...
def _key_second(x: jax.Array, key: jax.Array) -> jax.Array: ...
def _option_first(kind: str, x: jax.Array) -> jax.Array: ...
def _good(key: jax.Array, x: jax.Array, y: jax.Array, *, factor: int = 2) -> jax.Array: ...


@pytest.mark.parametrize(
  "fn, expected",
  [
    (_options_positional, ["`factor=2` can be passed positionally"]),
    (_catch_all, ["`*args` is a catch-all", "`**kwargs` is a catch-all"]),
    (_rng, ["parameter `rng`: prefer `key`"]),
    (_key_prefix, ["parameter `key_dropout`"]),
    (_key_second, ["key `key` must be the first parameter"]),
    (_option_first, ["`kind: str` comes before the array `x`"]),
    (functools.cache(_options_positional), ["`factor=2` can be passed positionally"]),
    (_good, []),
  ],
)
def test_the_check_flags_each_kind_of_break(fn, expected):
  problems = _problems(fn.__name__, fn)
  assert len(problems) == len(expected), problems
  for problem, want in zip(problems, expected, strict=True):
    assert problem.startswith(f"{fn.__name__}: ") and want in problem, problem
