"""Long evaluation attacks run in pieces, one jitted call per piece, so that a progress bar moves.

* `pgd_by_restart`: one restart per call; the same δ, bit for bit, as `pgd_attack` with
  `train=False` (freeze_misclassified, uniform start) in one call: each call runs
  `pgd_restart` and PGD's max-loss choice (`keep_higher_loss`) on the device.
* `apgd_by_chunk`: `APGD_CHUNK` iterations per call; the same δ, bit for bit, as `apgd_attack`
  with `train=False` in one call (iteration k of run r draws from the same keys and reads the
  same checkpoint tables); a run is skipped when every example is already fooled.
* `square_by_chunk`: `SQUARE_CHUNK` queries per call; the same δ and query counts, bit for
  bit, as `square_attack` in one call (query i draws from ``fold_in(key, i)`` in both), and it
  stops after the first piece that leaves no example to attack.

Only the restart number or the bounds of a piece cross from the host, so each (attack, batch
shape) compiles once.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks.apgd import (apgd_clean, apgd_functions, apgd_iterations, apgd_merge,
                                  apgd_run_result, apgd_start)
from fat_jax.attacks.core import check_eps
from fat_jax.attacks.pgd import keep_higher_loss, pgd_restart
from fat_jax.attacks.square import (SquareResult, square_done, square_queries, square_result,
                                    square_start)

APGD_CHUNK = 25      # iterations per call: 4 pieces for AutoAttack's 100
SQUARE_CHUNK = 250   # queries per call: 20 pieces for AutoAttack's 5000


def padded_length(m: int, batch_size: int, multiple: int = 1) -> int:
  """Padded batch length for m points: m rounded up to its four leading binary digits (at
  most 12.5 % padding, at most eight lengths per doubling of m, so few compilations per
  attack), then to a multiple of `multiple` (the devices of the data axis), at most
  `batch_size`."""
  step = 1 << max(m.bit_length() - 4, 0)
  size = -(-m // step) * step
  return min(-(-size // multiple) * multiple, batch_size)


def pad_rows(a, size: int):
  """Host array `a` padded to `size` rows by repeating its last row (a real example, so padded
  rows run the same code as the others; their results are dropped)."""
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)]) if size > len(a) else a


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


@functools.partial(jax.jit, static_argnames=('apply_fn', 'norm'))
def _square_start(params, state, x, y, key, eps, *, apply_fn, norm: str):
  return square_start(apply_fn, params, state, x, y, key, eps=eps, norm=norm)


@functools.partial(jax.jit, static_argnames=('apply_fn', 'queries', 'p_init', 'rescale_schedule',
                                             'norm'))
def _square_chunk(params, x, y, key, carry, stop, eps, *, apply_fn, queries: int, p_init: float,
                  rescale_schedule: bool, norm: str):
  carry = square_queries(apply_fn, params, x, y, key, carry, stop, eps=eps, queries=queries,
                         p_init=p_init, rescale_schedule=rescale_schedule, norm=norm)
  return carry, square_done(carry, queries)


def square_by_chunk(apply_fn, params, state, x, y, key, *, eps, queries: int = 5000,
                    p_init: float = 0.8, rescale_schedule: bool = False, norm: str = 'Linf',
                    on_chunk: Callable[[int], None] | None = None) -> SquareResult:
  """`square_attack` (evaluation mode), `SQUARE_CHUNK` queries per jitted call, calling
  `on_chunk(number of queries run so far)` after each (e.g. to move a progress bar); stops
  after the first call that leaves no example to attack. `eps` is a device value or a float."""
  check_eps(eps, norm)
  carry = _square_start(params, state, x, y, key, eps, apply_fn=apply_fn, norm=norm)
  for stop in range(SQUARE_CHUNK, queries + SQUARE_CHUNK, SQUARE_CHUNK):
    stop = min(stop, queries)
    carry, done = _square_chunk(params, x, y, key, carry, stop, eps, apply_fn=apply_fn,
                                queries=queries, p_init=p_init,
                                rescale_schedule=rescale_schedule, norm=norm)
    if on_chunk is not None:
      on_chunk(stop)
    if bool(done):
      break
  return square_result(x, carry)


_APGD_STATIC = ('apply_fn', 'loss', 'randomized', 'eot_samples', 'norm')


@functools.partial(jax.jit, static_argnames=('apply_fn', 'randomized'))
def _apgd_clean(params, state, x, y, key, *, apply_fn, randomized: bool):
  return apgd_clean(apply_fn, params, state, x, y, key, randomized=randomized)


@functools.partial(jax.jit, static_argnames=_APGD_STATIC)
def _apgd_start(params, state, x, y, target, key, eps, *, apply_fn, loss: str, randomized: bool,
                eot_samples: int, norm: str):
  gradient, misclassified = apgd_functions(apply_fn, params, x, y, loss=loss, target=target,
                                           randomized=randomized, eot_samples=eot_samples)
  return apgd_start(gradient, misclassified, x, key, eps=eps, state=state, norm=norm)


@functools.partial(jax.jit, static_argnames=_APGD_STATIC + ('steps', 'rho'))
def _apgd_chunk(params, x, y, target, key, carry, lo, hi, eps, *, apply_fn, loss: str,
                randomized: bool, eot_samples: int, norm: str, steps: int, rho: float):
  gradient, misclassified = apgd_functions(apply_fn, params, x, y, loss=loss, target=target,
                                           randomized=randomized, eot_samples=eot_samples)
  return apgd_iterations(gradient, misclassified, x, key, carry, lo, hi, eps=eps, steps=steps,
                         rho=rho, norm=norm)


@jax.jit
def _apgd_merge(carry, x, delta, fooled, best_loss):
  run = apgd_run_result(carry)
  return apgd_merge(run, x, delta, fooled, best_loss), run.state


def apgd_by_chunk(apply_fn, params, state, x, y, key, *, eps, steps: int = 100,
                  restarts: int = 1, loss: str = 'ce', target=None, rho: float = 0.75,
                  norm: str = 'Linf', randomized: bool = False, eot_samples: int = 1,
                  on_chunk: Callable[[int], None] | None = None) -> jnp.ndarray:
  """δ of `apgd_attack` (evaluation mode), `APGD_CHUNK` iterations per jitted call, calling
  `on_chunk(iterations run or skipped so far, over all restarts)` after each piece.
  `eps` is a device value or a float."""
  check_eps(eps, norm)
  fooled, state, runs_key = _apgd_clean(params, state, x, y, key, apply_fn=apply_fn,
                                        randomized=randomized)
  delta = jnp.zeros_like(x)
  best_loss = jnp.full(fooled.shape, -jnp.inf, jnp.float32)
  fixed = dict(apply_fn=apply_fn, loss=loss, randomized=randomized, eot_samples=eot_samples,
               norm=norm)
  for r in range(restarts):
    if not bool(jnp.all(fooled)):
      run_key = jax.random.fold_in(runs_key, r)
      carry = _apgd_start(params, state, x, y, target, run_key, eps, **fixed)
      for lo in range(0, steps, APGD_CHUNK):
        hi = min(lo + APGD_CHUNK, steps)
        carry = _apgd_chunk(params, x, y, target, run_key, carry, lo, hi, eps, steps=steps,
                            rho=rho, **fixed)
        if on_chunk is not None:
          on_chunk(r * steps + hi)
      (delta, fooled, best_loss), state = _apgd_merge(carry, x, delta, fooled, best_loss)
    if on_chunk is not None:
      on_chunk((r + 1) * steps)
  return jax.lax.stop_gradient(delta)
