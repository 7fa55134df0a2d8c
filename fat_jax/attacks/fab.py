"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020), targeted (FAB-T) and
untargeted, in L∞ and L2, following ``fra31/auto-attack autoattack/fab_base.py``,
``fab_pt.py`` and ``fab_projections.py``.

FAB searches for the *smallest* perturbation that reaches the decision boundary.
At the current point x¹ it linearises g(x) = z_t(x) − z_y(x) into the hyperplane
{u : ∇g·u = ∇g·x¹ − g(x¹)}, where t is the target class (FAB-T) or, untargeted,
the class k ≠ y whose linearised boundary is closest,
k = argmin_k |z_k − z_y| / ‖∇z_k − ∇z_y‖_q (q the dual norm: 1 for L∞, 2 for L2).
It computes the minimal-‖·‖_p steps onto that plane (inside the box) from x¹ (d₁)
and from the original point x⁰ (d₂); then

  α = min(max(‖d₁‖_p / (‖d₁‖_p + ‖d₂‖_p), 0), α_max)
  x¹ ← box((1 − α)(x¹ + η·d₁) + α(x⁰ + η·d₂))

and, once x¹ is misclassified, keeps it if it is the closest so far and steps
back towards x⁰: x¹ ← x⁰ + β(x¹ − x⁰). An example counts as broken only if the
closest misclassified point is within ‖δ‖_p ≤ ε. Restarts after the first start
at x⁰ + ε/2·t/‖t‖_p (t ~ U(−1, 1) in L∞, N(0, I) in L2), clipped to the box.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.attacks.apgd import top_targets
from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import Attack, ApplyFn, per_example
from fat_jax.attacks.eot import loss_and_grad

NOT_FOUND = 1e10


def project_hyperplane_linf(points: jax.Array, w: jax.Array, b: jax.Array,
                            iterations: int = 30) -> jax.Array:
  """Per row, the smallest-‖d‖∞ step d with w·(p + d) = b and p + d ∈ [0, 1]^D.

  Rows (N, D). Orient the plane so that c = w·p − b ≥ 0 has to be removed;
  coordinate i can move by at most r_i = distance to the box face that lowers
  w·u (towards 1 where w_i < 0, towards 0 where w_i > 0), so a step of L∞ size λ
  removes s(λ) = Σ_i |w_i|·min(λ, r_i), increasing and piecewise linear. λ* with
  s(λ*) = c is bracketed by `iterations` halvings of [0, max r], then solved
  exactly on its linear piece: λ* = (c − Σ_{r_i ≤ λ₀} |w_i| r_i) / Σ_{r_i > λ₀} |w_i|
  (the reference's ``projection_linf`` sorts the breakpoints instead; same
  result, no sort). If even the box corner (s(max r) ≤ c) does not reach the
  plane, the step to that corner is returned, as the reference does.
  """
  c = (w * points).sum(axis=1) - b
  w = w * jnp.where(c >= 0, 1.0, -1.0)[:, None]
  c = jnp.abs(c)
  towards_one = w < 0
  room = jnp.where(towards_one, 1.0 - points, points)
  weight = jnp.abs(w)
  removed = lambda lam: (weight * jnp.minimum(lam[:, None], room)).sum(axis=1)

  def halve(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    short = removed(mid) < c
    return jnp.where(short, mid, lo), jnp.where(short, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iterations, halve, (jnp.zeros_like(c), room.max(axis=1)))
  saturated = room <= lo[:, None]
  lam = ((c - (weight * room * saturated).sum(axis=1))
         / jnp.maximum((weight * ~saturated).sum(axis=1), 1e-30))
  lam = jnp.clip(lam, lo, hi)[:, None]   # out of reach: lo = hi = max r, the corner
  return jnp.where(towards_one, 1.0, -1.0) * jnp.minimum(lam, room) * (w != 0)


def project_hyperplane_l2(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """Per row, the smallest-‖d‖₂ step d with w·(p + d) = b and p + d ∈ [0, 1]^D
  (the reference's ``projection_l2``).

  Rows (N, D). Orient the plane so that c = w·p − b ≥ 0 has to be removed; the
  minimiser is d_i = −w_i·min(λ, r_i), where r_i = (distance to the box face
  that lowers w·u)/|w_i| is where coordinate i saturates, and λ solves
  s(λ) = Σ_i w_i²·min(λ, r_i) = c. s is increasing and piecewise linear with
  breakpoints r_i: with r sorted, λ lies on the piece after the last breakpoint
  r_(j) with s(r_(j)) ≤ c, λ = (c − Σ_{k≤j} w_(k)² r_(k)) / Σ_{k>j} w_(k)². If even
  the box corner (every coordinate saturated) does not reach the plane, the step
  to that corner is returned, as the reference does. Weights |w_i| ≤ 1e−8 are
  treated as 0 (the reference's threshold).
  """
  c = (w * points).sum(axis=1) - b
  w = w * jnp.where(c >= 0, 1.0, -1.0)[:, None]
  c = jnp.abs(c)
  active = jnp.abs(w) > 1e-8
  room = jnp.maximum(jnp.where(w > 0, points, 1.0 - points), 0.0)
  r = jnp.where(active, room / jnp.where(active, jnp.abs(w), 1.0), jnp.inf)
  order = jnp.argsort(r, axis=1)
  r_sorted = jnp.take_along_axis(r, order, axis=1)
  w2_sorted = jnp.take_along_axis(jnp.where(active, w * w, 0.0), order, axis=1)
  finite = jnp.isfinite(r_sorted)
  # Σ_{k≥j} w_(k)² (exact zeros over the inactive tail) and Σ_{k<j} w_(k)² r_(k), j = 0 … D.
  tail = jnp.pad(jnp.flip(jnp.cumsum(jnp.flip(w2_sorted, 1), axis=1), 1), ((0, 0), (0, 1)))
  head = jnp.pad(jnp.cumsum(jnp.where(finite, w2_sorted * r_sorted, 0.0), axis=1),
                 ((0, 0), (1, 0)))
  removed = head[:, :-1] + jnp.where(finite, r_sorted * tail[:, :-1], 0.0)   # s(r_(j))
  j = (removed <= c[:, None]).sum(axis=1, keepdims=True)
  rest = jnp.take_along_axis(tail, j, axis=1)
  lam = jnp.where(rest > 0, (c[:, None] - jnp.take_along_axis(head, j, axis=1))
                  / jnp.where(rest > 0, rest, 1.0), jnp.inf)
  return jnp.where(active, -w * jnp.minimum(lam, r), 0.0)


def _norm_fn(norm: str):
  """‖·‖_p of each row."""
  if norm == 'L2':
    return lambda v: jnp.sqrt((v ** 2).sum(axis=1))
  return lambda v: jnp.abs(v).max(axis=1)


def _targeted_plane(apply_fn, params, y, target, train):
  """The linearisation of g = z_t − z_y at x¹: (g(x¹), ∇g(x¹) rows, new state)."""
  gap = lambda logits: (jnp.take_along_axis(logits, target[:, None], axis=1)
                        - jnp.take_along_axis(logits, y[:, None], axis=1))[:, 0]

  def plane(x1, st):
    g = loss_and_grad(apply_fn, params, st, x1, gap, train=train)
    return g.loss, g.grad.reshape(len(x1), -1), g.state
  return plane


def _closest_plane(apply_fn, params, y, norm, train):
  """Untargeted: among k ≠ y, the linearised boundary z_k − z_y = 0 closest in ‖·‖_p,
  k = argmin |z_k − z_y| / (1e−12 + ‖∇z_k − ∇z_y‖_q) (one backward per class, as
  the reference's ``get_diff_logits_grads_batch``)."""
  dual = (lambda v: jnp.sqrt((v ** 2).sum(axis=-1))) if norm == 'L2' else (
      lambda v: jnp.abs(v).sum(axis=-1))

  def plane(x1, st):
    n = len(x1)
    logits, pullback, new_state = jax.vjp(
        lambda xa: apply_fn(params, st, xa, train)[:2], x1, has_aux=True)
    classes = logits.shape[-1]
    grads = jax.vmap(lambda e: pullback(jnp.broadcast_to(e, logits.shape))[0])(
        jnp.eye(classes, dtype=logits.dtype))
    grads = jnp.moveaxis(grads, 0, 1).reshape(n, classes, -1)
    rows = jnp.arange(n)
    df = logits - logits[rows, y][:, None]
    dg = grads - grads[rows, y][:, None]
    dist = jnp.abs(df) / (1e-12 + dual(dg))
    k = jnp.where(jnp.arange(classes) == y[:, None], jnp.inf, dist).argmin(axis=1)
    return df[rows, k], dg[rows, k], new_state
  return plane


def _fab_run(plane, apply_fn, params, x0, y, key, start, *, eps, norm, steps, alpha_max, eta,
             beta, train, state):
  """One FAB run from x⁰ (or a random start when `start`) on the hyperplanes
  `plane(x¹, state) -> (g, ∇g rows, state)`: (closest adversarial δ, its ‖·‖_p)."""
  n, shape = len(x0), x0.shape
  flat = x0.reshape(n, -1)
  size = _norm_fn(norm)
  if norm == 'L2':
    t = jax.random.normal(key, flat.shape, flat.dtype)
    project = project_hyperplane_l2
  else:
    t = jax.random.uniform(key, flat.shape, flat.dtype, -1.0, 1.0)
    project = project_hyperplane_linf
  random = jnp.clip(flat + 0.5 * eps * t / size(t)[:, None], 0.0, 1.0)
  x1 = jnp.where(start, random, flat)

  def iteration(_, carry):
    x1, adv, dist, st = carry
    value, w, st = plane(x1.reshape(shape), st)
    b = (w * x1).sum(axis=1) - value
    d = project(jnp.concatenate([x1, flat]), jnp.concatenate([w, w]), jnp.concatenate([b, b]))
    d1, d2 = d[:n], d[n:]
    a1 = jnp.maximum(size(d1)[:, None], 1e-8)
    a2 = jnp.maximum(size(d2)[:, None], 1e-8)
    alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)
    x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (flat + eta * d2) * alpha, 0.0, 1.0)
    logits, st, _ = apply_fn(params, st, x1.reshape(shape), train)
    wrong = logits.argmax(-1) != y
    norm_x = size(x1 - flat)
    closer = wrong & (norm_x < dist)
    adv = jnp.where(closer[:, None], x1, adv)
    dist = jnp.where(closer, norm_x, dist)
    x1 = jnp.where(wrong[:, None], flat + beta * (x1 - flat), x1)
    return x1, adv, dist, st

  init = (x1, flat, jnp.full((n,), NOT_FOUND, flat.dtype), state)
  _, adv, dist, state = jax.lax.fori_loop(0, steps, iteration, init)
  return adv.reshape(shape) - x0, dist, state


def _fab_runs(apply_fn, params, state, x, y, key, plane_for_run, *, runs, restarts, eps, norm,
              steps, alpha_max, eta, beta, train):
  """FAB runs r = 0 … runs − 1 on the hyperplanes `plane_for_run(clean logits, r // restarts)`,
  a random start when r % restarts > 0, each on the examples not broken yet."""
  logits, state, _ = apply_fn(params, state, x, train)

  def one_run(r, carry):
    delta_out, fooled, st = carry

    def attack(st):
      return _fab_run(plane_for_run(logits, r // restarts), apply_fn, params, x, y,
                      jax.random.fold_in(key, r), r % restarts > 0, eps=eps, norm=norm,
                      steps=steps, alpha_max=alpha_max, eta=eta, beta=beta, train=train, state=st)

    def skip(st):
      return jnp.zeros_like(x), jnp.full(fooled.shape, NOT_FOUND, x.dtype), st

    delta, dist, st = jax.lax.cond(jnp.all(fooled), skip, attack, st)
    newly = ~fooled & (dist <= eps)
    return jnp.where(per_example(newly, x), delta, delta_out), fooled | newly, st

  init = (jnp.zeros_like(x), logits.argmax(-1) != y, state)
  delta, _, state = jax.lax.fori_loop(0, runs, one_run, init)
  return Attack(jax.lax.stop_gradient(delta), state)


@attack_convention(minimum_norm=True)
def fab_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, target, steps: int = 100,
               restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
               norm: str = 'Linf', train: bool = False) -> Attack:
  """Targeted FAB in `norm` ('Linf' or 'L2') towards `target` (N,): δ of the closest
  misclassified point found if ‖δ‖_p ≤ ε, else 0. Restarts after the first start at
  ε/2 around x.

  Per example 1 + restarts·steps·2 forwards and restarts·steps backwards.
  """
  plane = lambda logits, t: _targeted_plane(apply_fn, params, y, target, train)
  return _fab_runs(apply_fn, params, state, x, y, key, plane, runs=restarts, restarts=restarts,
                   eps=eps, norm=norm, steps=steps, alpha_max=alpha_max, eta=eta, beta=beta,
                   train=train)


@attack_convention(minimum_norm=True)
def fab_targeted_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps,
                        n_target_classes: int = 9, steps: int = 100, restarts: int = 1,
                        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                        norm: str = 'Linf', train: bool = False) -> Attack:
  """FAB-T of AutoAttack: `fab_attack` towards each of the top `n_target_classes`
  classes by the clean logits (2nd, 3rd, …), each only on examples not broken yet."""
  plane = lambda logits, t: _targeted_plane(apply_fn, params, y,
                                            top_targets(logits, n_target_classes)[:, t], train)
  return _fab_runs(apply_fn, params, state, x, y, key, plane, runs=n_target_classes * restarts,
                   restarts=restarts, eps=eps, norm=norm, steps=steps, alpha_max=alpha_max,
                   eta=eta, beta=beta, train=train)


@attack_convention(minimum_norm=True)
def fab_untargeted_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, steps: int = 100,
                          restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                          beta: float = 0.9, norm: str = 'Linf',
                          train: bool = False) -> Attack:
  """Untargeted FAB (AutoAttack's 'fab'): each iteration moves towards the closest
  linearised boundary among all classes k ≠ y; δ of the closest misclassified point
  found if ‖δ‖_p ≤ ε, else 0; restarts after the first start at ε/2 around x, each
  on the examples not broken yet.

  Per example 1 + restarts·steps·2 forwards and restarts·steps·C backwards (C classes).
  """
  plane = lambda logits, t: _closest_plane(apply_fn, params, y, norm, train)
  return _fab_runs(apply_fn, params, state, x, y, key, plane, runs=restarts, restarts=restarts,
                   eps=eps, norm=norm, steps=steps, alpha_max=alpha_max, eta=eta, beta=beta,
                   train=train)
