"""`per_example`: per-example values against a batch, the broadcast every loss and attack uses."""
from __future__ import annotations

import jax


def per_example(v: jax.Array, x: jax.Array) -> jax.Array:
  """Per-example values v (N,) as (N, 1, …, 1), broadcastable against x (N, ...)."""
  return v.reshape((-1,) + (1,) * (x.ndim - 1))
