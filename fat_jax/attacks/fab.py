"""FAB-T, the targeted L∞ Fast Adaptive Boundary attack (Croce & Hein 2020), following
``fra31/auto-attack autoattack/fab_base.py`` and ``fab_projections.py`` (SPEC §4.2).

FAB searches for the *smallest* perturbation that reaches the decision boundary
towards a target class t. At the current point x¹ it linearises
g(x) = z_t(x) − z_y(x) into the hyperplane {u : ∇g·u = ∇g·x¹ − g(x¹)} and
computes the minimal-L∞ steps onto it (inside the box) from x¹ (d₁) and from
the original point x⁰ (d₂); then

  α = min(max(‖d₁‖∞ / (‖d₁‖∞ + ‖d₂‖∞), 0), α_max)
  x¹ ← box((1 − α)(x¹ + η·d₁) + α(x⁰ + η·d₂))

and, once x¹ is misclassified, keeps it if it is the closest so far and steps
back towards x⁰: x¹ ← x⁰ + β(x¹ − x⁰). An example counts as broken only if the
closest misclassified point is within ‖δ‖∞ ≤ ε.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.attacks.apgd import top_targets
from fat_jax.attacks.core import Attack, ApplyFn, check_eps
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


def _fab_run(apply_fn, params, x0, y, target, key, start, *, eps, steps, alpha_max, eta, beta,
             train, state):
  """One FAB-T run from x⁰ (or a random start when `start`): (closest adversarial, its ‖·‖∞)."""
  n, shape = len(x0), x0.shape
  flat = x0.reshape(n, -1)
  t = jax.random.uniform(key, flat.shape, flat.dtype, -1.0, 1.0)
  random = jnp.clip(flat + 0.5 * eps * t / jnp.abs(t).max(axis=1, keepdims=True), 0.0, 1.0)
  x1 = jnp.where(start, random, flat)
  gap = lambda logits: (jnp.take_along_axis(logits, target[:, None], axis=1)
                        - jnp.take_along_axis(logits, y[:, None], axis=1))[:, 0]

  def iteration(_, carry):
    x1, adv, dist, st = carry
    g = loss_and_grad(apply_fn, params, st, x1.reshape(shape), gap, train=train)
    w = g.grad.reshape(n, -1)
    b = (w * x1).sum(axis=1) - g.loss
    d = project_hyperplane_linf(jnp.concatenate([x1, flat]), jnp.concatenate([w, w]),
                                jnp.concatenate([b, b]))
    d1, d2 = d[:n], d[n:]
    a1 = jnp.maximum(jnp.abs(d1).max(axis=1, keepdims=True), 1e-8)
    a2 = jnp.maximum(jnp.abs(d2).max(axis=1, keepdims=True), 1e-8)
    alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)
    x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (flat + eta * d2) * alpha, 0.0, 1.0)
    logits, st, _ = apply_fn(params, g.state, x1.reshape(shape), train)
    wrong = logits.argmax(-1) != y
    norm = jnp.abs(x1 - flat).max(axis=1)
    closer = wrong & (norm < dist)
    adv = jnp.where(closer[:, None], x1, adv)
    dist = jnp.where(closer, norm, dist)
    x1 = jnp.where(wrong[:, None], flat + beta * (x1 - flat), x1)
    return x1, adv, dist, st

  init = (x1, flat, jnp.full((n,), NOT_FOUND, flat.dtype), state)
  _, adv, dist, state = jax.lax.fori_loop(0, steps, iteration, init)
  return adv.reshape(shape) - x0, dist, state


def _fab_runs(apply_fn, params, state, x, y, key, targets_for_run, *, runs, restarts, eps, steps,
              alpha_max, eta, beta, train):
  """FAB-T runs over (target, restart) pairs, each on the examples not broken yet."""
  logits, state, _ = apply_fn(params, state, x, train)
  expand = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))

  def one_run(r, carry):
    delta_out, fooled, st = carry

    def attack(st):
      return _fab_run(apply_fn, params, x, y, targets_for_run(logits, r // restarts),
                      jax.random.fold_in(key, r), r % restarts > 0, eps=eps, steps=steps,
                      alpha_max=alpha_max, eta=eta, beta=beta, train=train, state=st)

    def skip(st):
      return jnp.zeros_like(x), jnp.full(fooled.shape, NOT_FOUND, x.dtype), st

    delta, dist, st = jax.lax.cond(jnp.all(fooled), skip, attack, st)
    newly = ~fooled & (dist <= eps)
    return jnp.where(expand(newly), delta, delta_out), fooled | newly, st

  init = (jnp.zeros_like(x), logits.argmax(-1) != y, state)
  delta, _, state = jax.lax.fori_loop(0, runs, one_run, init)
  return Attack(jax.lax.stop_gradient(delta), state)


def fab_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, target, steps: int = 100,
               restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
               train: bool = False) -> Attack:
  """Targeted L∞ FAB towards `target` (N,): δ of the closest misclassified point
  found if ‖δ‖∞ ≤ ε, else 0. Restarts after the first start at ε/2 around x.

  Per example 1 + restarts·steps·2 forwards and restarts·steps backwards.
  """
  check_eps(eps)
  return _fab_runs(apply_fn, params, state, x, y, key, lambda logits, t: target,
                   runs=restarts, restarts=restarts, eps=eps, steps=steps, alpha_max=alpha_max,
                   eta=eta, beta=beta, train=train)


def fab_targeted_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps,
                        n_target_classes: int = 9, steps: int = 100, restarts: int = 1,
                        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                        train: bool = False) -> Attack:
  """FAB-T of AutoAttack: `fab_attack` towards each of the top `n_target_classes`
  classes by the clean logits (2nd, 3rd, …), each only on examples not broken yet."""
  check_eps(eps)
  return _fab_runs(apply_fn, params, state, x, y, key,
                   lambda logits, t: top_targets(logits, n_target_classes)[:, t],
                   runs=n_target_classes * restarts, restarts=restarts, eps=eps, steps=steps,
                   alpha_max=alpha_max, eta=eta, beta=beta, train=train)
