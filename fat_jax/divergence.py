"""Divergence at the weights: non-finite values anywhere in a state pytree.

The loss is computed before each update, so a step can turn finite weights into NaN or
inf with a finite loss; the training loop therefore checks every floating leaf of its
state (parameters, BatchNorm statistics, optimiser state, per-example state) before each
checkpoint and before the final evaluation. The check is one jitted reduction on device;
only when it fails are the offending leaves located on the host, for the message.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.parallel import to_host


class DivergenceError(FloatingPointError):
  """Training produced NaN or inf (in the loss or in the state)."""


def _floating(tree) -> list:
  return [x for x in jax.tree.leaves(tree)
          if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.inexact)]


@jax.jit
def _all_finite(leaves) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] or [jnp.array(True)]))


def all_finite(tree) -> bool:
  """Whether every floating-point leaf of `tree` is finite (one reduction on device)."""
  return bool(_all_finite(_floating(tree)))


def non_finite_paths(tree) -> list[str]:
  """The paths of the floating-point leaves of `tree` holding NaN or inf."""
  return [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.inexact)
          and not np.isfinite(to_host(x)).all()]


def check_finite(tree, when: str, last_good: Callable[[], str], limit: int = 5) -> None:
  """Raise `DivergenceError` if a floating leaf of `tree` is not finite; the message says
  `when` it was found, which leaves (at most `limit`) and `last_good()` (what to fall back
  on, computed only then)."""
  if all_finite(tree):
    return
  paths = non_finite_paths(tree)
  shown = ', '.join(paths[:limit]) + (f' and {len(paths) - limit} more' if len(paths) > limit
                                      else '')
  raise DivergenceError(f'Training diverged: NaN or inf in the state {when} ({shown}). '
                        f'{last_good()}')
