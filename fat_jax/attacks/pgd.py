"""PGD-k with R restarts, with the semantics of `locuslab/fast_adversarial`'s
``attack_pgd`` (L∞), and its L2 version (Madry et al. 2018: normalised-gradient steps)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import (Attack, ApplyFn, init_perturbation,
                                  input_gradient, l2_step, per_example, sign_step)
from fat_jax.losses import per_example_loss


@attack_convention()
def pgd_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, alpha, steps: int,
               restarts: int = 1, loss: str = 'ce', train: bool = False,
               freeze_misclassified: bool = True, init: str = 'uniform',
               init_scale: float = 1.0, unroll: bool = False, norm: str = 'Linf') -> Attack:
  """PGD in the `norm` ball: per restart δ ~ U(−ε, ε) (box), then `steps` updates
  δ ← box(Π_ε(δ + α·sign ∇ℓ)) ('Linf'); or δ uniform in the L2 ε-ball (box),
  then δ ← box(Π_ε(δ + α·∇ℓ/‖∇ℓ‖₂)) with the L2 projection ('L2').

  `init`/`init_scale` choose the start as `init_perturbation` does (MART's
  training attack starts from 0.001·N(0, I): init='normal', init_scale=0.001).

  With `freeze_misclassified` (evaluation) an example stops moving once the
  model misclassifies it. Across restarts the δ with the highest per-example
  loss is kept, ties going to the later restart. `train`: the BatchNorm mode
  (`fat_jax.attacks`); with `train=True` its running statistics are threaded through every
  forward.

  `unroll` compiles the steps (and restarts) as straight-line code instead of a
  loop: XLA's CPU backend runs convolutions inside loops 3–4× slower, at the cost
  of a program that grows with `steps` × `restarts` (training attacks: ≤ 10 steps).
  `pgd_restart` and `keep_higher_loss` are its two parts, for a driver that runs the
  restarts one call at a time (the same δ).
  """
  run_restart = lambda r, st: pgd_restart(
      apply_fn, params, st, x, y, key, r, eps=eps, alpha=alpha, steps=steps, loss=loss,
      train=train, freeze_misclassified=freeze_misclassified, init=init,
      init_scale=init_scale, unroll=unroll, norm=norm)

  if restarts == 1:
    delta, state = run_restart(0, state)
    return Attack(jax.lax.stop_gradient(delta), state)

  def one_restart(r, carry):
    best_delta, best_loss, st = carry
    delta, st = run_restart(r, st)
    best_delta, best_loss = keep_higher_loss(apply_fn, params, st, x, y, delta, best_delta,
                                             best_loss, loss=loss)
    return best_delta, best_loss, st

  carry = (jnp.zeros_like(x), jnp.full(x.shape[:1], -jnp.inf, jnp.float32), state)
  delta, _, state = jax.lax.fori_loop(0, restarts, one_restart, carry, unroll=unroll)
  return Attack(jax.lax.stop_gradient(delta), state)


def pgd_restart(apply_fn: ApplyFn, params, state, x, y, key, restart, *, eps, alpha,
                steps: int, loss: str = 'ce', train: bool = False,
                freeze_misclassified: bool = True, init: str = 'uniform',
                init_scale: float = 1.0, unroll: bool = False,
                norm: str = 'Linf') -> tuple[jnp.ndarray, object]:
  """(δ, state) of restart number `restart` of `pgd_attack`: the start drawn with
  ``fold_in(key, restart)``, then `steps` updates (arguments as `pgd_attack`)."""

  def one_step(_, carry):
    delta, st = carry
    g = input_gradient(apply_fn, params, st, x, y, delta, train=train, loss=loss)
    if norm == 'L2':
      moved = l2_step(x, delta, g.grad, eps=eps, alpha=alpha)
    else:
      moved = sign_step(x, delta, g.grad, eps=eps, alpha=alpha)
    if freeze_misclassified:
      correct = g.logits.argmax(-1) == y
      moved = jnp.where(per_example(correct, x), moved, delta)
    return moved, g.state

  delta = init_perturbation(jax.random.fold_in(key, restart), x, eps, init, init_scale, norm)
  return jax.lax.fori_loop(0, steps, one_step, (delta, state), unroll=unroll)


def keep_higher_loss(apply_fn: ApplyFn, params, state, x, y, delta, best_delta, best_loss, *,
                     loss: str = 'ce') -> tuple[jnp.ndarray, jnp.ndarray]:
  """PGD's choice across restarts, per example: `delta` if its loss ℓ(x + δ) (evaluation mode)
  is ≥ `best_loss` (ties to the later restart), else `best_delta`; and the higher loss."""
  logits, _, _ = apply_fn(params, state, x + delta, False)
  restart_loss = per_example_loss(loss)(logits, y)
  better = per_example(restart_loss >= best_loss, x)
  return jnp.where(better, delta, best_delta), jnp.maximum(restart_loss, best_loss)
