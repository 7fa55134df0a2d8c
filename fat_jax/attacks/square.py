"""Square Attack in L∞ and L2, score-based (Andriushchenko et al. 2020), following
``fra31/auto-attack autoattack/square.py``.

A gradient-free random search on the margin m(x) = z_y − max_{i≠y} z_i.

L∞:

* start from vertical stripes x + ε·s, one random sign per column and channel;
* each query proposes, per example, a square window of side
  s = max(round(√(p·H·W)), 1) at a random position whose pixels get
  ±2ε (one random sign per channel), projected onto the ε-ball and the box.

L2 (the "meta-pseudo-gaussian" windows ``eta`` of the reference):

* start from a grid of ⌊H/k⌋ × ⌊W/k⌋ blocks of side k = ⌊H/5⌋ (offset
  ⌊(H − 5k)/2⌋), each block ±η_k per channel, rescaled onto the ε-sphere and
  clipped to the box, where η_k is `eta_pattern(k)`: two stacked halves of
  concentric rectangles weighted Σ 1/(j+1)², the lower half negated, unit L2
  norm, transposed with probability ½;
* each query picks two windows W₁, W₂ of odd side s = max(round(√(p·H·W)), 3)
  (+1 if even) and, per channel, replaces δ on W₁ by
  (±η_s + δ_W₁/‖δ_W₁‖₂) rescaled to norm √(max(ε² − ‖δ‖₂², 0)/C + ‖δ_{W₁∪W₂}‖₂²),
  sets δ to 0 on the rest of W₂, then rescales the whole δ onto the ε-sphere and clips
  to the box (``attack_single_run``'s L2 branch; `square_l2_update`).

In both: the proposal is accepted if it lowers the margin or misclassifies;
* p halves after queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
  (`rescale_schedule` maps the query index i to ⌊i/n_queries·10000⌋ first, the
  Square paper's default; AutoAttack runs Square with it off).

Only examples that are correctly classified and not yet broken query the
model; the loop stops when none is left. Differences from the reference: the
window position and signs are drawn per example (the reference draws one
window for the whole batch; the original Square code draws per example); the
window's top-left corner is uniform over all H − s + 1 rows (and columns),
where the reference's ``random_int(0, h − s)`` never picks the last one, so
that the last row and column of a small image are never changed alone; in L2
the η patterns' transposition is drawn per example and block (the reference
draws it once per batch) and a window side larger than the image is cut to the
image (the reference needs s ≤ H); and only the margin loss is implemented
(AutoAttack's choice).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import (ApplyFn, check_eps, clip_to_box, l2_norm, normalize_l2,
                                  project_linf)
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


def square_l2_sides(p_init: float, height: int, width: int) -> np.ndarray:
  """L2 window sides per stage: max(round(√(p·H·W)), 3), made odd, at most min(H, W)."""
  sides = [max(int(round(math.sqrt(p_init / 2 ** k * height * width))), 3)
           for k in range(len(SCHEDULE) + 1)]
  return np.array([min(s + 1 - s % 2, height, width) for s in sides], np.int32)


def _rectangles(height: int, width: int) -> np.ndarray:
  """Concentric rectangles around (⌊H/2⌋, ⌊W/2⌋): pixel (i, j) at ring
  ρ = max(|i − ⌊H/2⌋|, |j − ⌊W/2⌋|) gets Σ_{k=ρ}^{K−1} 1/(k+1)², K = max(⌊H/2⌋, ⌊W/2⌋) + 1;
  unit L2 norm (the reference's ``eta_rectangles``)."""
  rings = np.maximum(np.abs(np.arange(height) - height // 2)[:, None],
                     np.abs(np.arange(width) - width // 2)[None, :])
  weights = 1.0 / np.arange(1, max(height // 2, width // 2) + 2) ** 2
  tail = np.cumsum(weights[::-1])[::-1]           # tail[ρ] = Σ_{k≥ρ} 1/(k+1)², k ≤ K − 1
  values = tail[rings]
  return values / max(np.sqrt((values ** 2).sum()), 1e-30)


def eta_pattern(side: int) -> np.ndarray:
  """The reference's ``eta(s)`` before its random transpose: rectangles on the top
  ⌊s/2⌋ rows, minus rectangles on the rest, unit L2 norm; (s, s) float32."""
  pattern = np.concatenate([_rectangles(side // 2, side), -_rectangles(side - side // 2, side)])
  return (pattern / np.sqrt((pattern ** 2).sum())).astype(np.float32)


def _window(top, left, side, height: int, width: int):
  """(N, H, W, 1) masks of the side × side windows at (top, left) (N,)."""
  rows = jnp.arange(height)[None, :, None, None]
  cols = jnp.arange(width)[None, None, :, None]
  top, left = top[:, None, None, None], left[:, None, None, None]
  return (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)


def square_l2_update(x, delta, eps, window, window_2, eta) -> jax.Array:
  """The L2 proposal from δ = x_best − x (N, H, W, C): on `window` W₁ (mask
  (N, H, W, 1)) per channel δ' = (η + δ_W₁/(1e−12 + ‖δ_W₁‖₂)) rescaled to
  √(max(ε² − ‖δ‖₂², 0)/C + ‖δ_{W₁∪W₂}‖₂²), δ' = 0 on `window_2` outside W₁, δ' = δ
  elsewhere; returns box(ε·δ'/(‖δ'‖₂ + 1e−12)). `eta` (N, H, W, C) holds the signed
  η pattern on W₁ (zero elsewhere)."""
  channels = delta.shape[-1]
  in_1 = window.astype(delta.dtype)
  norm_1 = jnp.sqrt(((delta * in_1) ** 2).sum(axis=(1, 2), keepdims=True))
  norm_image = l2_norm(delta)[:, None, None, None]
  norm_windows = l2_norm(delta * (window | window_2))[:, None, None, None]
  new = eta + delta * in_1 / (1e-12 + norm_1)
  size = jnp.sqrt((new ** 2).sum(axis=(1, 2), keepdims=True))
  new = new / (1e-12 + size) * jnp.sqrt(
      jnp.maximum(eps ** 2 - norm_image ** 2, 0.0) / channels + norm_windows ** 2)
  new = jnp.where(window, new, jnp.where(window_2, 0.0, delta))
  return clip_to_box(x, eps * normalize_l2(new))


def _square_l2_start(key, xi, eps):
  """The L2 start: the grid of ±η blocks, rescaled onto the ε-sphere, clipped to the box."""
  n, height, width, channels = xi.shape
  side = height // 5
  offset = (height - 5 * side) // 2
  canvases = []
  for i in range(height // side):
    for j in range(width // side):
      canvas = np.zeros((2, height + side, width + side), np.float32)   # cut to H × W below
      top, left = offset + i * side, offset + j * side
      canvas[0, top:top + side, left:left + side] = eta_pattern(side)
      canvas[1, top:top + side, left:left + side] = eta_pattern(side).T
      canvases.append(canvas[:, :height, :width])
  canvases = jnp.asarray(np.stack(canvases))          # (B, 2, H, W)
  flip_key, sign_key = jax.random.split(key)
  flip = jax.random.bernoulli(flip_key, 0.5, (n, len(canvases)))
  blocks = jnp.where(flip[:, :, None, None], canvases[None, :, 1], canvases[None, :, 0])
  signs = jax.random.rademacher(sign_key, (n, len(canvases), channels), xi.dtype)
  return clip_to_box(xi, eps * normalize_l2(jnp.einsum('nbhw,nbc->nhwc', blocks, signs)))


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


class SquareCarry(NamedTuple):
  """Square's state between queries: the next query index, the current δ (N, H, W, C), its
  margin, the queries used per example, the model state and the examples attacked."""
  i: jax.Array
  delta: jax.Array
  best: jax.Array
  used: jax.Array
  state: object
  active: jax.Array


def _margin_fn(apply_fn, params, x, y, train):
  """δ (image view), state → (z_y − max_{i≠y} z_i at x + δ, the new state)."""
  xi = image_view(x)

  def margin(delta, st):
    logits, st, _ = apply_fn(params, st, (xi + delta).reshape(x.shape), train)
    return -margin_loss(logits, y), st
  return margin


def square_start(apply_fn: ApplyFn, params, state, x, y, key, *, eps, norm: str = 'Linf',
                 train: bool = False) -> SquareCarry:
  """Square's start (module doc) and its margin, before query 0; the examples misclassified
  at x are not attacked."""
  check_eps(eps, norm)
  xi = image_view(x)
  n, height, width, channels = xi.shape
  if norm == 'L2' and min(height, width) < 5:
    raise ValueError(f'Square L2 needs images of at least 5 × 5 pixels (its start uses blocks '
                     f'of side H // 5), got x of shape {x.shape}; pass images as (N, H, W, C).')
  logits, state, _ = apply_fn(params, state, x, train)
  active = logits.argmax(-1) == y
  init_key, _ = jax.random.split(key)
  if norm == 'L2':
    delta = _square_l2_start(init_key, xi, eps)
  else:
    stripes = jax.random.rademacher(init_key, (n, 1, width, channels), xi.dtype)
    delta = clip_to_box(xi, eps * stripes)
  best, state = _margin_fn(apply_fn, params, x, y, train)(delta, state)
  return SquareCarry(jnp.zeros((), jnp.int32), delta, best, active.astype(jnp.int32), state,
                     active)


def square_queries(apply_fn: ApplyFn, params, x, y, key, carry: SquareCarry, stop, *, eps,
                   queries: int = 5000, p_init: float = 0.8, rescale_schedule: bool = False,
                   norm: str = 'Linf', train: bool = False) -> SquareCarry:
  """Queries carry.i, …, stop − 1 of a `queries`-query Square run (fewer when no example is
  left), with the same `key` as `square_start`. Query i draws from ``fold_in(key', i)``, so
  running 0…queries − 1 in pieces gives the same δ as in one call."""
  xi = image_view(x)
  n, height, width, channels = xi.shape
  _, key = jax.random.split(key)
  margin = _margin_fn(apply_fn, params, x, y, train)
  sides = jnp.asarray(square_sides(p_init, height, width))
  rows = jnp.arange(height)[None, :, None, None]
  cols = jnp.arange(width)[None, None, :, None]

  def proposal_linf(i, delta):
    pos_key, sign_key = jax.random.split(jax.random.fold_in(key, i))
    side = sides[schedule_stage(i, queries, rescale_schedule)]
    side_h, side_w = jnp.minimum(side, height), jnp.minimum(side, width)
    u = jax.random.uniform(pos_key, (2, n))
    top = jnp.floor(u[0] * (height - side_h + 1)).astype(jnp.int32)[:, None, None, None]
    left = jnp.floor(u[1] * (width - side_w + 1)).astype(jnp.int32)[:, None, None, None]
    window = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
    signs = jax.random.rademacher(sign_key, (n, 1, 1, channels), xi.dtype)
    return clip_to_box(xi, project_linf(delta + window * (2 * eps) * signs, eps))

  l2_sides = square_l2_sides(p_init, height, width)
  patterns = np.zeros((len(l2_sides), l2_sides.max(), l2_sides.max()), np.float32)
  for k, side in enumerate(l2_sides):
    patterns[k, :side, :side] = eta_pattern(side)
  patterns, l2_sides = jnp.asarray(patterns), jnp.asarray(l2_sides)

  def proposal_l2(i, delta):
    pos_key, flip_key, sign_key = jax.random.split(jax.random.fold_in(key, i), 3)
    stage = schedule_stage(i, queries, rescale_schedule)
    side = l2_sides[stage]
    u = jax.random.uniform(pos_key, (4, n))
    corner = lambda v, size: jnp.floor(v * (size - side + 1)).astype(jnp.int32)
    top, left = corner(u[0], height), corner(u[1], width)
    window = _window(top, left, side, height, width)
    window_2 = _window(corner(u[2], height), corner(u[3], width), side, height, width)
    # η_s placed on W₁: pixel (r, c) reads η[r − top, c − left] (transposed when flipped).
    last = patterns.shape[1] - 1
    local_r = jnp.clip(rows - top[:, None, None, None], 0, last)
    local_c = jnp.clip(cols - left[:, None, None, None], 0, last)
    flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    eta = patterns[stage][jnp.where(flip, local_c, local_r), jnp.where(flip, local_r, local_c)]
    signs = jax.random.rademacher(sign_key, (n, 1, 1, channels), xi.dtype)
    return square_l2_update(xi, delta, eps, window, window_2, window * eta * signs)

  proposal = proposal_l2 if norm == 'L2' else proposal_linf

  def keep_going(c: SquareCarry):
    return (c.i < stop) & ~square_done(c, queries)

  def query(c: SquareCarry):
    candidate = proposal(c.i, c.delta)
    m, st = margin(candidate, c.state)
    left = _todo(c)
    accept = left & (m < c.best)   # a lower margin; with the margin loss this covers m ≤ 0
    delta = jnp.where(accept[:, None, None, None], candidate, c.delta)
    return c._replace(i=c.i + 1, delta=delta, best=jnp.where(accept, m, c.best),
                      used=c.used + left, state=st)

  return jax.lax.while_loop(keep_going, query, carry)


def _todo(carry: SquareCarry) -> jax.Array:
  """The examples still querying: attacked and not yet misclassified."""
  return carry.active & (carry.best > 0)


def square_done(carry: SquareCarry, queries: int) -> jax.Array:
  """Whether the run has nothing left to do: all queries made or no example left."""
  return (carry.i >= queries) | ~jnp.any(_todo(carry))


def square_result(x, carry: SquareCarry) -> SquareResult:
  """The `SquareResult` of a finished run: δ = 0 for the examples not attacked."""
  delta = jnp.where(carry.active[:, None, None, None], carry.delta, 0.0).reshape(x.shape)
  return SquareResult(jax.lax.stop_gradient(delta), carry.state, carry.used)


@attack_convention()
def square_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, queries: int = 5000,
                  p_init: float = 0.8, rescale_schedule: bool = False, norm: str = 'Linf',
                  train: bool = False) -> SquareResult:
  """Square Attack in the `norm` ball ('Linf' or 'L2') with at most `queries` model
  queries per example.

  δ is the lowest-margin point found (misclassified if the attack succeeded);
  examples misclassified at x get δ = 0 and no queries. L2 needs images (NHWC or
  NHW) of at least 5 × 5 pixels. In pieces: `square_start`, `square_queries`,
  `square_result`.
  """
  carry = square_start(apply_fn, params, state, x, y, key, eps=eps, norm=norm, train=train)
  carry = square_queries(apply_fn, params, x, y, key, carry, queries, eps=eps, queries=queries,
                         p_init=p_init, rescale_schedule=rescale_schedule, norm=norm,
                         train=train)
  return square_result(x, carry)
