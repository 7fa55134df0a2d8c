"""PGD-k with R restarts, with the semantics of `locuslab/fast_adversarial`'s
``attack_pgd`` (L∞), and its L2 version (Madry et al. 2018: normalised-gradient steps)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.attacks.core import (Attack, ApplyFn, check_eps, init_perturbation,
                                  input_gradient, l2_step, sign_step)
from fat_jax.losses import per_example_loss


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
  loss is kept, ties going to the later restart. `train=True` runs the model's
  BatchNorm in train mode (PGD-AT's attack) and threads its running statistics
  through every forward; evaluation uses running statistics (`train=False`).

  `unroll` compiles the steps (and restarts) as straight-line code instead of a
  loop: XLA's CPU backend runs convolutions inside loops 3–4× slower, at the cost
  of a program that grows with `steps` × `restarts` (training attacks: ≤ 10 steps).
  """
  check_eps(eps, norm)
  loss_fn = per_example_loss(loss)
  expand = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))

  def one_step(_, carry):
    delta, st = carry
    g = input_gradient(apply_fn, params, st, x, y, delta, train=train, loss=loss)
    if norm == 'L2':
      moved = l2_step(x, delta, g.grad, eps=eps, alpha=alpha)
    else:
      moved = sign_step(x, delta, g.grad, eps=eps, alpha=alpha)
    if freeze_misclassified:
      correct = g.logits.argmax(-1) == y
      moved = jnp.where(expand(correct), moved, delta)
    return moved, g.state

  def run_restart(r, st):
    delta = init_perturbation(jax.random.fold_in(key, r), x, eps, init, init_scale, norm)
    return jax.lax.fori_loop(0, steps, one_step, (delta, st), unroll=unroll)

  if restarts == 1:
    delta, state = run_restart(0, state)
    return Attack(jax.lax.stop_gradient(delta), state)

  def one_restart(r, carry):
    best_delta, best_loss, st = carry
    delta, st = run_restart(r, st)
    logits, _, _ = apply_fn(params, st, x + delta, False)
    restart_loss = loss_fn(logits, y)
    better = restart_loss >= best_loss
    return (jnp.where(expand(better), delta, best_delta),
            jnp.maximum(restart_loss, best_loss), st)

  carry = (jnp.zeros_like(x), jnp.full(x.shape[:1], -jnp.inf, jnp.float32), state)
  delta, _, state = jax.lax.fori_loop(0, restarts, one_restart, carry, unroll=unroll)
  return Attack(jax.lax.stop_gradient(delta), state)
