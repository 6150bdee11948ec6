"""A trainer's skeleton: its frozen config, whose fields are the command-line flags, the prologue
of a run (`start`) and the way back into a finished one (`load_run`).

    @dataclasses.dataclass(frozen=True)
    class Config(Loop):                      # seed, workdir, cadences, multi-host flags
      loss: str = choice("l2", LOSSES)     # --loss, validated at parse time
      epochs: int = 5                        # --epochs

    if __name__ == "__main__":
      config.run(Config, train)      # defines the flags, parses them, calls train(Config(...))

Flags are defined only under `__main__` (absl raises DuplicateFlagError when two trainers that
define flags at import time are imported by one process, e.g. the test suite).

The flags are plain absl flags, one per field (`--loss=ssim`), each listed with its help in
`--helpfull`, a choice field checked against its options at parse time. This module defines them
rather than `ml_collections.config_flags.DEFINE_config_dataclass` (absl itself has no dataclass
flags), which does not keep that contract: it prefixes every field (`--config.loss=ssim`), defines
a field's flag only when the command line names it (`--helpfull` lists none), checks a string
against no options (only Enum fields), and assigns fields with `setattr`, which a frozen config
refuses. What it adds, nested configs and config files, no trainer uses: every config is flat.
Resuming is checked on the parsed config whatever parses it (`save`).
"""

import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import jax
from absl import app, flags
from absl import logging as absl_logging

from train import checkpoints, sharding, xla_cpu


def choice(default: str, options: Iterable[str], help: str = "") -> Any:  # noqa: A002
  """A string field restricted to `options`; `--name=bad` fails at parse time listing them."""
  return dataclasses.field(
    default=default, metadata={"choices": tuple(sorted(options)), "help": help}
  )


def documented(default: Any, help: str) -> Any:  # noqa: A002
  """A field with a help string for `--helpfull`."""
  return dataclasses.field(default=default, metadata={"help": help})


def _base_type(annotation: Any) -> type:
  """`float | None` -> float; the flag parser for an optional field."""
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0]
  return annotation


def define_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines one absl flag per field of the dataclass `cls`."""
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    kind, help_text = _base_type(hints[field.name]), field.metadata.get("help", field.name)
    default = field.default
    if "choices" in field.metadata:
      flags.DEFINE_enum(
        field.name, default, field.metadata["choices"], help_text, flag_values=flag_values
      )
    elif kind is bool:
      flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
    elif kind is int:
      flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
    elif kind is float:
      flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
    elif kind is str:
      flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)
    else:
      raise TypeError(f"{cls.__name__}.{field.name}: unsupported flag type {kind}.")


def run(cls: type, main: Any) -> None:
  """The body of an entry point's `__main__`: flags from `cls`, then `main(cls(**flags))`.

  Library INFO logs (orbax's checkpoint chatter, JAX's backend probing) are hidden; the trainers
  report progress on stdout. `--verbosity=0` shows them again. When the run's backend will be
  CPU, XLA and glibc's malloc are tuned for training first (`train.xla_cpu`), which the run's
  first line says.
  """
  tuning = xla_cpu.apply()
  define_flags(cls)

  def _main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected positional arguments {argv[1:]}; flags are --name=value.")
    if not flags.FLAGS["verbosity"].present:
      absl_logging.set_verbosity(absl_logging.WARNING)
    print(tuning, flush=True)
    main(from_flags(cls))  # its result is dropped: absl would print it and exit with status 1

  app.run(_main)


def from_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS) -> Any:
  """Builds the config from parsed flags."""
  return cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(cls)})


def replace(config: Any, **overrides: Any) -> Any:
  """`dataclasses.replace` that rejects unknown names with the list of valid ones and checks
  choice fields, so configs built in tests and notebooks are validated like flags."""
  fields = {f.name: f for f in dataclasses.fields(config)}
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"unknown config fields {unknown}; valid fields are {sorted(fields)}.")
  for name, value in overrides.items():
    options = fields[name].metadata.get("choices")
    if options is not None and value not in options:
      raise ValueError(f"--{name}={value!r} is not one of {list(options)}.")
  return dataclasses.replace(config, **overrides)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Loop:
  """What every trainer's config holds besides its own choices: seed, run folder, cadence of logs
  and checkpoints, and how the processes of a multi-host launch find each other. A trainer's
  `Config(Loop)` adds its own fields (and may re-declare one of these with another default)."""

  seed: int = 0
  workdir: str = documented("", "run folder (default: runs/<trainer>_<its main options>)")
  checkpoint_every: int = 500
  eval_every: int = documented(1, "epochs between test evaluations, pictures and checkpoints")
  keep_checkpoints: int = 2
  log_every: int = 20
  max_steps: int | None = documented(None, "stop early (tests, benchmarks)")
  progress: bool = True
  coordinator_address: str = documented("", "host:port of process 0 (multi-host runs)")
  num_processes: int = documented(1, "processes of a multi-host run")
  process_id: int = documented(0, "this process's index in a multi-host run")


def start(config: Loop) -> None:
  """Every run's prologue: joins the multi-host launch, then writes (or, resuming, checks)
  `config.json` in the run folder."""
  sharding.initialize_distributed(
    config.coordinator_address, config.num_processes, config.process_id
  )
  save(config, config.workdir)


def load_run(
  workdir: str, cls: type, create: Callable[[Any], tuple[Any, Any, Any]], *, best: bool = False
) -> tuple[Any, Any, Any]:
  """A run read back from its folder (notebooks, evaluation, a trainer's final scoring).

  Args:
    workdir: the run folder `start` wrote.
    cls: the trainer's config class; `config.json` is read into it.
    create: the trainer's `config -> (model, tx, initial state)`; the state is the structure the
      checkpoint is restored into.
    best: the checkpoint with the lowest test loss instead of the newest.

  Returns:
    (config, model, state).
  """
  with open(os.path.join(workdir, "config.json")) as f:
    config = cls(**json.load(f))
  model, _, state = create(config)
  return config, model, checkpoints.restore(workdir, state, best=best)


# Fields that may change between a run and its resumption: how long to train, how to show and
# store it, where it lives (a run folder copied or moved elsewhere resumes there), and how the
# processes of a multi-host launch find each other (the data position follows the step).
RESUMABLE = (
  "epochs",
  "max_steps",
  "progress",
  "log_every",
  "checkpoint_every",
  "eval_every",
  "keep_checkpoints",
  "workdir",
  "coordinator_address",
  "num_processes",
  "process_id",
)


def save(config: Any, workdir: str, *, resumable: Iterable[str] = RESUMABLE) -> None:
  """Writes `config.json`; on resume, refuses a config that changes anything but `resumable`.

  Every process checks; only process 0 writes (atomically, so a process reading it concurrently
  never sees half a file).
  """
  path = os.path.join(workdir, "config.json")
  current = dataclasses.asdict(config)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    changed = sorted(
      k
      for k in current.keys() | stored.keys()
      if k not in resumable and stored.get(k) != current.get(k)
    )
    if changed:
      details = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in changed)
      raise ValueError(
        f"{workdir} holds a run with a different config ({details}). Resume with the same "
        "flags, or pass a new --workdir to start a fresh run."
      )
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(current, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)
