"""Evaluation PGD run one restart per jitted call, so that a progress bar moves per restart.

`pgd_by_restart` returns the same δ, bit for bit, as `pgd_attack` with `train=False`
(freeze_misclassified, uniform start) in one call: each call runs `pgd_restart` and PGD's
max-loss choice (`keep_higher_loss`) on the device; only the restart number crosses from the
host, so each (attack, batch shape) compiles once.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from fat_jax.attacks.core import check_eps
from fat_jax.attacks.pgd import keep_higher_loss, pgd_restart


@functools.partial(jax.jit, static_argnames=('apply_fn', 'steps', 'loss', 'norm', 'select'))
def _restart(params, state, x, y, key, restart, eps, alpha, best_delta, best_loss, *, apply_fn,
             steps: int, loss: str, norm: str, select: bool):
  delta, _ = pgd_restart(apply_fn, params, state, x, y, key, restart, eps=eps, alpha=alpha,
                         steps=steps, loss=loss, norm=norm)
  if not select:
    return delta, best_loss
  return keep_higher_loss(apply_fn, params, state, x, y, delta, best_delta, best_loss, loss=loss)


def pgd_by_restart(apply_fn, params, state, x, y, key, *, eps, alpha, steps: int,
                   restarts: int, loss: str = 'ce', norm: str = 'Linf',
                   on_restart: Callable[[], None] | None = None) -> jnp.ndarray:
  """δ of evaluation PGD-`steps`-`restarts` (`pgd_attack(..., train=False)`), one jitted
  call per restart; with `on_restart`, each restart is waited for and then `on_restart()`
  called (e.g. to move a progress bar). `eps` and `alpha` are device values or floats
  (changing them does not recompile)."""
  check_eps(eps, norm)
  best_delta = jnp.zeros_like(x)
  best_loss = jnp.full(x.shape[:1], -jnp.inf, jnp.float32)
  for r in range(restarts):
    best_delta, best_loss = _restart(params, state, x, y, key, r, eps, alpha, best_delta,
                                     best_loss, apply_fn=apply_fn, steps=steps, loss=loss,
                                     norm=norm, select=restarts > 1)
    if on_restart is not None:
      best_delta.block_until_ready()
      on_restart()
  return best_delta
