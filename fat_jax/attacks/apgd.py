"""Auto-PGD (APGD) in L∞ and L2 and its targeted version APGD-T (Croce & Hein 2020),
following ``fra31/auto-attack autoattack/autopgd_base.py``.

One run of N iterations, per example:

* start on the ε-sphere: x⁰ = box(x + ε·t/(‖t‖ + 1e−12)), t ~ U(−1, 1) in L∞
  (‖·‖∞), t ~ N(0, I) in L2 (‖·‖₂);
* step size η = 2ε; with z = box(Π_ε(xᵏ + η·u(∇ℓ(xᵏ)))),
  xᵏ⁺¹ = box(Π_ε(xᵏ + α(z − xᵏ) + (1 − α)(xᵏ − xᵏ⁻¹))), α = 1 at k = 0, then 0.75,
  where u(g) = sign g and Π_ε clips to [−ε, ε] in L∞, u(g) = g/(‖g‖₂ + 1e−12) and
  Π_ε(δ) = δ/(‖δ‖₂ + 1e−12)·min(ε, ‖δ‖₂) in L2 (the box clip after the L2
  projection only shrinks coordinates, so the point stays in the ball);
* at the checkpoints `apgd_checkpoints(N)` (window w since the previous one) the
  step is halved and the iterate jumps back to the best-loss point (with its
  gradient) if (1) the loss increased in at most ρ·w of the window's steps
  (ρ = 0.75) or (2) the step was not halved at the previous checkpoint and the
  best loss has not improved since;
* any misclassified iterate counts: the attack returns, per example, the last
  misclassified iterate, else the highest-loss point.

Two details follow the reference code exactly: the first window's first
increase is counted against a recorded loss of 0 (its ``loss_steps[-1]``), and
the momentum term after a jump uses the iterate before the jump.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import (Attack, ApplyFn, clip_to_box, normalize_l2,
                                  per_example, project_l2, project_linf)
from fat_jax.attacks.eot import randomized_gradient, randomized_logits
from fat_jax.losses import cross_entropy
from fat_jax.losses.dlr import dlr_loss, dlr_targeted_loss

APGD_LOSSES = ('ce', 'dlr', 'dlr_targeted')
MOMENTUM = 0.75


def apgd_checkpoints(steps: int) -> list[int]:
  """The iterations [p₀N, p₁N, …] ≤ N after which APGD checks its step size.

  p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), with the
  reference's integer windows w₁ = max(⌊0.22N⌋, 1),
  w_{j+1} = max(w_j − max(⌊0.03N⌋, 1), max(⌊0.06N⌋, 1)).
  N = 100 gives [0, 22, 41, 57, 70, 80, 87, 93, 99].
  """
  window = max(int(0.22 * steps), 1)
  shrink, minimum = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
  points = [0]
  while points[-1] + window <= steps:
    points.append(points[-1] + window)
    window = max(window - shrink, minimum)
  return points


def _check_tables(steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Per iteration k (0-based): is a checkpoint reached after it, and the window length."""
  points = apgd_checkpoints(steps)
  is_check, window = np.zeros(steps, bool), np.ones(steps, np.float32)
  for lo, hi in zip(points[:-1], points[1:]):
    is_check[hi - 1], window[hi - 1] = True, hi - lo
  return is_check, window


def attack_loss(name: str, labels: jax.Array, targets=None) -> Callable[[jax.Array], jax.Array]:
  """The per-example loss of logits that APGD maximises: 'ce', 'dlr' or 'dlr_targeted'."""
  if name == 'ce':
    return lambda logits: cross_entropy(logits, labels)
  if name == 'dlr':
    return lambda logits: dlr_loss(logits, labels)
  if name == 'dlr_targeted':
    if targets is None:
      raise ValueError("loss='dlr_targeted' needs the target classes (target=...).")
    return lambda logits: dlr_targeted_loss(logits, labels, targets)
  raise ValueError(f'Unknown APGD loss {name!r}; known: {APGD_LOSSES}.')


class _Run(NamedTuple):
  """One APGD run's result: best-loss point, fooled flag, best loss, last misclassified point."""
  delta_best: jax.Array
  fooled: jax.Array
  loss_best: jax.Array
  delta_adv: jax.Array
  state: object


def _sphere_start(key, x, eps, norm: str):
  """box(x + ε·t/(‖t‖ + 1e−12)) − x per example (the reference's ``normalize``):
  t ~ U(−1, 1) and ‖·‖∞ in L∞, t ~ N(0, I) and ‖·‖₂ in L2."""
  if norm == 'L2':
    return clip_to_box(x, eps * normalize_l2(jax.random.normal(key, x.shape, x.dtype)))
  t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  size = jnp.abs(t).reshape(len(x), -1).max(axis=1)
  return clip_to_box(x, eps * t / (per_example(size, x) + 1e-12))


def apgd_step(x, delta, delta_old, grad, step, a, *, eps, norm: str = 'Linf'):
  """One APGD update in δ = x_adv − x coordinates, as ``attack_single_run`` does it:
  z = box(Π_ε(δ + η·u(g))), then box(Π_ε(δ + a(z − δ) + (1 − a)(δ − δ_old))).

  `step` η is per example (broadcast to δ), `a` the momentum weight (1 at the
  first iteration, then 0.75); u and Π_ε as in the module docstring.
  """
  if norm == 'L2':
    direction, project = normalize_l2(grad), project_l2
  else:
    direction, project = jnp.sign(grad), project_linf
  z = clip_to_box(x, project(delta + step * direction, eps))
  return clip_to_box(x, project(delta + a * (z - delta) + (1 - a) * (delta - delta_old), eps))


def apgd_start(gradient, misclassified, x, key, *, eps, state, norm: str) -> dict:
  """The carry of one APGD run before iteration 0: the sphere start, its gradient and the
  bookkeeping; `gradient(delta, key, state) -> LossGrad` at x + δ, `misclassified(logits)` the
  per-example success test."""
  start_key, draw_key = jax.random.split(key)
  delta = _sphere_start(start_key, x, eps, norm)
  g = gradient(delta, jax.random.fold_in(draw_key, 0), state)
  n = len(x)
  return dict(
      delta=delta, delta_old=delta, grad=g.grad, step=jnp.full((n,), 2.0, x.dtype) * eps,
      delta_best=delta, grad_best=g.grad, loss_best=g.loss, fooled=misclassified(g.logits),
      delta_adv=delta, loss_prev=jnp.zeros((n,), g.loss.dtype),
      increases=jnp.zeros((n,), jnp.float32), loss_best_check=g.loss,
      reduced_check=jnp.ones((n,), bool), state=g.state)


def apgd_iterations(gradient, misclassified, x, key, carry: dict, lo, hi, *, eps, steps: int,
                    rho: float, norm: str) -> dict:
  """Iterations lo, …, hi − 1 of an APGD run of `steps` iterations (module doc), with the
  run's `key` as in `apgd_start`; iteration k draws from ``fold_in(key', k + 1)`` and reads the
  checkpoint tables at k, so running 0…steps − 1 in pieces gives the same carry."""
  _, draw_key = jax.random.split(key)
  is_check, window = map(jnp.asarray, _check_tables(steps))

  def iteration(k, c):
    a = jnp.where(k > 0, MOMENTUM, 1.0)
    z = apgd_step(x, c['delta'], c['delta_old'], c['grad'], per_example(c['step'], x), a,
                  eps=eps, norm=norm)
    g = gradient(z, jax.random.fold_in(draw_key, k + 1), c['state'])
    wrong = misclassified(g.logits)
    improved = g.loss > c['loss_best']
    loss_best = jnp.where(improved, g.loss, c['loss_best'])
    delta_best = jnp.where(per_example(improved, x), z, c['delta_best'])
    grad_best = jnp.where(per_example(improved, x), g.grad, c['grad_best'])
    increases = c['increases'] + (g.loss > c['loss_prev'])
    # Checkpoint: condition 1 (too few increases) or 2 (no halving last time, no progress).
    check = is_check[k]
    oscillating = increases <= rho * window[k]
    stalled = ~c['reduced_check'] & (c['loss_best_check'] >= loss_best)
    reduce = check & (oscillating | stalled)
    back = per_example(reduce, x)
    return dict(
        delta=jnp.where(back, delta_best, z), delta_old=c['delta'],
        grad=jnp.where(back, grad_best, g.grad), step=jnp.where(reduce, c['step'] / 2, c['step']),
        delta_best=delta_best, grad_best=grad_best, loss_best=loss_best,
        fooled=c['fooled'] | wrong, delta_adv=jnp.where(per_example(wrong, x), z, c['delta_adv']),
        loss_prev=g.loss, increases=jnp.where(check, 0.0, increases),
        loss_best_check=jnp.where(check, loss_best, c['loss_best_check']),
        reduced_check=jnp.where(check, oscillating | stalled, c['reduced_check']),
        state=g.state)

  return jax.lax.fori_loop(lo, hi, iteration, carry)


def apgd_run_result(carry: dict) -> _Run:
  """A finished run's result."""
  return _Run(carry['delta_best'], carry['fooled'], carry['loss_best'], carry['delta_adv'],
              carry['state'])


def apgd_merge(run: _Run, x, delta_out, fooled, best_loss):
  """(δ, fooled, best loss) after `run` on the examples not yet fooled: a newly fooled example
  takes the run's misclassified point, another one its best point if its loss is higher."""
  newly = ~fooled & run.fooled
  better = ~fooled & ~run.fooled & (run.loss_best > best_loss)
  delta_out = jnp.where(per_example(newly, x), run.delta_adv,
                        jnp.where(per_example(better, x), run.delta_best, delta_out))
  return delta_out, fooled | run.fooled, jnp.where(better, run.loss_best, best_loss)


def _apgd_runs(gradient_for_run, misclassified, x, key, fooled, state, *, runs: int, eps,
               steps: int, rho: float, norm: str):
  """`runs` APGD runs; run r uses `gradient_for_run(r)` and the key ``fold_in(key, r)``, and
  only changes examples not yet fooled.

  Returns (δ, state): for fooled examples the misclassified point of the
  first successful run, for the others the highest-loss point over the runs. A
  run is skipped when every example is already fooled.
  """
  def one_run(r, carry):
    delta_out, fooled, best_loss, st = carry

    def attack(st):
      gradient, run_key = gradient_for_run(r), jax.random.fold_in(key, r)
      c = apgd_start(gradient, misclassified, x, run_key, eps=eps, state=st, norm=norm)
      return apgd_run_result(apgd_iterations(gradient, misclassified, x, run_key, c, 0, steps,
                                             eps=eps, steps=steps, rho=rho, norm=norm))

    def skip(st):
      zeros = jnp.zeros_like(x)
      return _Run(zeros, jnp.zeros_like(fooled), jnp.full_like(best_loss, -jnp.inf), zeros, st)

    run = jax.lax.cond(jnp.all(fooled), skip, attack, st)
    return (*apgd_merge(run, x, delta_out, fooled, best_loss), run.state)

  init = (jnp.zeros_like(x), fooled, jnp.full(fooled.shape, -jnp.inf, jnp.float32), state)
  delta, _, _, state = jax.lax.fori_loop(0, runs, one_run, init)
  return jax.lax.stop_gradient(delta), state


def _misclassified_fn(y, randomized: bool):
  """The success test: argmax ≠ y; never for a randomised model, where one draw's
  misclassification is noise (its examples all keep the highest EOT-loss point)."""
  if randomized:
    return lambda logits: jnp.zeros(len(y), bool)
  return lambda logits: logits.argmax(-1) != y


def apgd_functions(apply_fn, params, x, y, *, loss: str = 'ce', target=None, train: bool = False,
                   randomized: bool = False, eot_samples: int = 1):
  """(gradient, misclassified) of an APGD run on `loss`: ``gradient(delta, key, state) ->
  LossGrad`` at x + δ (EOT over `eot_samples` draws when `randomized`) and the success test."""
  loss_fn = attack_loss(loss, y, target)

  def gradient(delta, key, st):
    return randomized_gradient(apply_fn, params, st, x + delta, loss_fn, key,
                               randomized=randomized, samples=eot_samples, train=train)
  return gradient, _misclassified_fn(y, randomized)


def apgd_clean(apply_fn, params, state, x, y, key, *, train: bool = False,
               randomized: bool = False):
  """What APGD decides at x before its runs: (examples already fooled, state, the runs' key;
  run r uses ``fold_in(runs' key, r)``)."""
  clean_key, key = jax.random.split(key)
  logits, state = randomized_logits(apply_fn, params, state, x, clean_key,
                                    randomized=randomized, train=train)
  return _misclassified_fn(y, randomized)(logits), state, key


@attack_convention()
def apgd_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, steps: int = 100,
                restarts: int = 1, loss: str = 'ce', target=None, rho: float = 0.75,
                norm: str = 'Linf', train: bool = False, randomized: bool = False,
                eot_samples: int = 1) -> Attack:
  """APGD in the `norm` ball ('Linf' or 'L2') on `loss` ('ce', 'dlr', or
  'dlr_targeted' with `target` classes (N,)).

  Examples misclassified at x are not attacked (δ = 0); each restart runs only
  on examples not yet fooled. The per-example result: the misclassified
  iterate found, else the highest-loss point (the reference returns x there;
  the robust flags are the same). Forward/backward passes per example:
  1 + restarts·(steps + 1)·K forwards and restarts·(steps + 1)·K backwards.

  With `randomized=True`, `apply_fn` is ``(params, state, x, train, key)``,
  each gradient and loss is averaged over `eot_samples` = K draws (EOT,
  `fat_jax.attacks.eot`), every example is attacked and gets its highest-loss
  point (a single draw's misclassification decides nothing; score the result
  over many draws). `train`: the BatchNorm mode (`fat_jax.attacks`).

  In pieces: `apgd_clean`, then per run `apgd_start`, `apgd_iterations`, `apgd_run_result`
  and `apgd_merge`.
  """
  gradient, misclassified = apgd_functions(apply_fn, params, x, y, loss=loss, target=target,
                                           train=train, randomized=randomized,
                                           eot_samples=eot_samples)
  fooled, state, key = apgd_clean(apply_fn, params, state, x, y, key, train=train,
                                  randomized=randomized)
  delta, state = _apgd_runs(lambda r: gradient, misclassified, x, key, fooled, state,
                            runs=restarts, eps=eps, steps=steps, rho=rho, norm=norm)
  return Attack(delta, state)


def top_targets(logits: jax.Array, n_target_classes: int) -> jax.Array:
  """(N, n) classes ranked 2nd … (n+1)-th by the logits: AutoAttack's targets."""
  if n_target_classes > logits.shape[-1] - 1:
    raise ValueError(f'n_target_classes={n_target_classes} exceeds the {logits.shape[-1] - 1} '
                     'classes other than the top one.')
  return jnp.argsort(-logits, axis=-1)[:, 1:n_target_classes + 1]


@attack_convention()
def apgd_targeted_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, steps: int = 100,
                         restarts: int = 1, n_target_classes: int = 9, rho: float = 0.75,
                         norm: str = 'Linf', train: bool = False, randomized: bool = False,
                         eot_samples: int = 1) -> Attack:
  """APGD-T: APGD in the `norm` ball on the targeted DLR loss for each of the top
  `n_target_classes` classes by the clean logits (2nd, 3rd, …), each only on
  examples still robust."""
  clean_key, key = jax.random.split(key)
  logits, state = randomized_logits(apply_fn, params, state, x, clean_key,
                                    randomized=randomized, train=train)
  targets = top_targets(logits, n_target_classes)

  def gradient_for_run(r):
    return apgd_functions(apply_fn, params, x, y, loss='dlr_targeted',
                          target=targets[:, r // restarts], train=train, randomized=randomized,
                          eot_samples=eot_samples)[0]

  misclassified = _misclassified_fn(y, randomized)
  delta, state = _apgd_runs(gradient_for_run, misclassified, x, key, misclassified(logits),
                               state, runs=n_target_classes * restarts, eps=eps, steps=steps,
                               rho=rho, norm=norm)
  return Attack(delta, state)
