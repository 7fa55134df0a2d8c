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
* On a CPU, the cores can be devices of their own (`split_cpu_cores`): each runs its shard
  of a batch on one thread, which on small convolutions beats one device whose kernels
  spread over all cores (docs/throughput.md).
"""
from __future__ import annotations

import os

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


def usable_cores() -> int:
  """The CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def cpu_device_count(setting: str, data_parallel: bool, batch_size: int,
                     cores: int | None = None) -> int:
  """The XLA CPU devices for ``config.cpu_devices``: a positive integer as written, or for
  'auto' one per usable core (`cores`; None: `usable_cores()`) where the work splits its
  batches over `make_data_mesh()` (`data_parallel`), at most the largest count that divides
  `batch_size`; else 1 (XLA's default: one device, its kernels threaded over all cores)."""
  setting = str(setting)
  if setting != 'auto':
    if not setting.isdigit() or int(setting) < 1:
      raise ValueError(f"cpu_devices must be 'auto' or a positive integer, got {setting!r}.")
    return int(setting)
  if not data_parallel:
    return 1
  cores = usable_cores() if cores is None else cores
  return max(d for d in range(1, max(cores, 1) + 1) if batch_size % d == 0)


def split_cpu_cores(n: int) -> None:
  """Makes XLA's CPU backend `n` devices, each running its kernels on one thread
  (``jax_num_cpu_devices``, ``--xla_cpu_multi_thread_eigen=false``), so that a batch split over
  `make_data_mesh()` runs one shard per core. Only before JAX starts its backends; a device
  count the user set (``$XLA_FLAGS``, ``$JAX_NUM_CPU_DEVICES``) is left as it is."""
  flags = os.environ.get('XLA_FLAGS', '')
  user_set = 'xla_force_host_platform_device_count' in flags or jax.config.jax_num_cpu_devices > 0
  if n <= 1 or user_set:
    return
  jax.config.update('jax_num_cpu_devices', n)
  os.environ['XLA_FLAGS'] = f'{flags} --xla_cpu_multi_thread_eigen=false'.strip()


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
