"""Square Attack, L∞, score-based (Andriushchenko et al. 2020), following
``fra31/auto-attack autoattack/square.py`` (SPEC §4.2).

A gradient-free random search on the margin m(x) = z_y − max_{i≠y} z_i:

* start from vertical stripes x + ε·s, one random sign per column and channel;
* each query proposes, per example, a square window of side
  s = max(round(√(p·H·W)), 1) at a random position whose pixels get
  ±2ε (one random sign per channel), projected onto the ε-ball and the box;
* the proposal is accepted if it lowers the margin or misclassifies;
* p halves after queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
  (`rescale_schedule` maps the query index i to ⌊i/n_queries·10000⌋ first, the
  Square paper's default; AutoAttack runs Square with it off).

Only examples that are correctly classified and not yet broken query the
model; the loop stops when none is left. Differences from the reference: the
window position and signs are drawn per example (the reference draws one
window for the whole batch; the original Square code draws per example); the
window's top-left corner is uniform over all H − s + 1 rows (and columns),
where the reference's ``random_int(0, h − s)`` never picks the last one, so
that the last row and column of a small image are never changed alone; and
only the margin loss is implemented (AutoAttack's choice).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks.core import ApplyFn, check_eps, clip_to_box, project_linf
from fat_jax.losses import margin_loss

SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


class SquareResult(NamedTuple):
  """An `Attack` (δ, state) plus the number of queries each example used."""
  delta: jax.Array
  state: object
  queries: jax.Array


def square_sides(p_init: float, height: int, width: int) -> np.ndarray:
  """The window side at each stage of the p schedule (p = p_init / 2^stage)."""
  return np.array([max(int(round(math.sqrt(p_init / 2 ** k * height * width))), 1)
                   for k in range(len(SCHEDULE) + 1)], np.int32)


def schedule_stage(i, n_queries: int, rescale: bool):
  """Number of schedule thresholds passed by query index i (p = p_init / 2^stage)."""
  if rescale:
    i = (i * 10000) // n_queries
  return jnp.sum(i > jnp.asarray(SCHEDULE))


def image_view(x: jax.Array) -> jax.Array:
  """x as (N, H, W, C): NHWC as is, (N, H, W) with C = 1, (N, D) as one row of D pixels."""
  if x.ndim == 4:
    return x
  if x.ndim == 3:
    return x[..., None]
  return x.reshape(len(x), 1, -1, 1)


def square_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, queries: int = 5000,
                  p_init: float = 0.8, rescale_schedule: bool = False,
                  train: bool = False) -> SquareResult:
  """L∞ Square Attack with at most `queries` model queries per example.

  δ is the lowest-margin point found (misclassified if the attack succeeded);
  examples misclassified at x get δ = 0 and no queries.
  """
  check_eps(eps)
  xi = image_view(x)
  n, height, width, channels = xi.shape
  sides = jnp.asarray(square_sides(p_init, height, width))
  rows = jnp.arange(height)[None, :, None, None]
  cols = jnp.arange(width)[None, None, :, None]

  def margin(delta, st):  # z_y − max_{i≠y} z_i at x + δ, and the new state
    logits, st, _ = apply_fn(params, st, (xi + delta).reshape(x.shape), train)
    return -margin_loss(logits, y), st

  logits, state, _ = apply_fn(params, state, x, train)
  active = logits.argmax(-1) == y
  init_key, key = jax.random.split(key)
  stripes = jax.random.rademacher(init_key, (n, 1, width, channels), xi.dtype)
  delta = clip_to_box(xi, eps * stripes)
  best, state = margin(delta, state)
  used = active.astype(jnp.int32)

  def proposal(i, delta):
    pos_key, sign_key = jax.random.split(jax.random.fold_in(key, i))
    side = sides[schedule_stage(i, queries, rescale_schedule)]
    side_h, side_w = jnp.minimum(side, height), jnp.minimum(side, width)
    u = jax.random.uniform(pos_key, (2, n))
    top = jnp.floor(u[0] * (height - side_h + 1)).astype(jnp.int32)[:, None, None, None]
    left = jnp.floor(u[1] * (width - side_w + 1)).astype(jnp.int32)[:, None, None, None]
    window = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
    signs = jax.random.rademacher(sign_key, (n, 1, 1, channels), xi.dtype)
    return clip_to_box(xi, project_linf(delta + window * (2 * eps) * signs, eps))

  def todo(best):
    return active & (best > 0)

  def keep_going(carry):
    i, _, best, _, _ = carry
    return (i < queries) & jnp.any(todo(best))

  def query(carry):
    i, delta, best, used, st = carry
    candidate = proposal(i, delta)
    m, st = margin(candidate, st)
    left = todo(best)
    accept = left & (m < best)   # a lower margin; with the margin loss this covers m ≤ 0
    delta = jnp.where(accept[:, None, None, None], candidate, delta)
    return i + 1, delta, jnp.where(accept, m, best), used + left, st

  _, delta, _, used, state = jax.lax.while_loop(
      keep_going, query, (jnp.zeros((), jnp.int32), delta, best, used, state))
  delta = jnp.where(active[:, None, None, None], delta, 0.0).reshape(x.shape)
  return SquareResult(jax.lax.stop_gradient(delta), state, used)

