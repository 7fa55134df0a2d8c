"""Devices, meshes and processes: data parallelism by sharding, not pmap.

* One mesh axis, ``data``, over all devices of all processes (`make_data_mesh`);
  parameters and optimiser state are replicated, each batch is split over ``data``.
  Under `jax.jit` a sharded batch is one global batch: BatchNorm statistics are
  those of the global batch (synchronised BN), so the result does not depend on
  the number of devices beyond floating-point noise.
* Several processes (hosts) join through `jax.distributed.initialize`
  (`initialize_distributed`); each puts on its own devices the rows of every
  global batch that they hold (`fat_jax.data.shard_batch`), and only process 0
  writes files (`is_writer`); orbax coordinates the checkpoints of all processes.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def initialize_distributed(config) -> None:
  """Joins the processes of a multi-host run, as `config` (a ConfigDict section) says.

  `coordinator_address` ('host:port' of process 0) with `num_processes` and
  `process_id`: an explicit cluster (e.g. several machines, or localhost);
  `auto=True`: `jax.distributed.initialize()`'s own cluster detection (SLURM,
  Open MPI, Cloud TPU, GKE). Neither: a single process (nothing to do).
  """
  if config.coordinator_address:
    if not 0 <= config.process_id < config.num_processes:
      raise ValueError(f'distributed.process_id={config.process_id} must be in '
                       f'[0, num_processes={config.num_processes}).')
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes,
                               process_id=config.process_id)
  elif config.auto:
    jax.distributed.initialize()


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def make_data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis ``data`` over all (or the given) devices."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh):
  """Place every leaf of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def to_host(x) -> np.ndarray:
  """A (possibly sharded over several processes) array as one numpy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
