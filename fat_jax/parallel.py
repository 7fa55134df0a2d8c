"""Device mesh and shardings: data parallelism by sharding, not pmap.

Under `jax.jit` a batch sharded over the ``data`` axis is one global batch:
BatchNorm statistics are computed over the global batch (synchronised BN).
"""
from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def make_data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis ``data`` over all (or the given) devices."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh):
  """Place every leaf of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, replicated(mesh))
