"""Data parallelism: one ("data",) mesh over every device of every process.

The train step is written for one device and jitted; the batch is sharded along its first axis
and the state replicated, so XLA inserts the gradient all-reduce. One device is a mesh of one.
This is the documented successor of `jax.pmap` (JAX 0.8 changelog).
"""

import os

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def initialize_distributed(
  coordinator_address: str = "", num_processes: int = 1, process_id: int = 0
) -> None:
  """Joins a multi-process run when one is configured (flags, or JAX's environment variables).

  With `num_processes == 1` and no `JAX_COORDINATOR_ADDRESS` in the environment this does nothing.
  On CPU the gloo collectives are selected, so several processes on one machine (127.0.0.1) or
  several hosts run the same program as GPUs/TPUs would.
  """
  if num_processes <= 1 and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return
  if jax.config.jax_platforms in (None, "", "cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()


def data_mesh(devices: list | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch, mesh: jax.sharding.Mesh):
  """Assembles each process's slice of the batch (a pytree of numpy arrays) into global arrays."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local_batch
  )


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  if batch_size % mesh.size:
    raise ValueError(
      f"--batch_size={batch_size} must be divisible by the number of devices ({mesh.size}) "
      "to shard it over the data mesh; choose a multiple."
    )
