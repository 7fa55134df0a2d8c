"""The training attack and schedule of Dynamic Adversarial Training (DART; Wang et al.,
ICML 2019, "On the Convergence and Robustness of Adversarial Training";
official code `YisenWang/dynamic_adv_training`).

Early epochs train on weakly converged adversarial examples, later ones on
well converged ones: PGD stops moving an example once its FOSC
(`fat_jax.attacks.fosc`) is at most c_t, and c_t decreases linearly from
c_max to 0 over the first T' epochs (CIFAR-10: c_max = 0.5, T' = 100 of 120
epochs, ε = 0.031, α = ε/4, K = 10 steps; docs/lecture_systems.md).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import ApplyFn, init_perturbation, per_example, sign_step
from fat_jax.attacks.eot import loss_and_grad
from fat_jax.attacks.fosc import fosc
from fat_jax.losses import per_example_loss


class DARTAttack(NamedTuple):
  """An `Attack` (δ, state) plus the number of PGD steps each example took."""
  delta: jax.Array
  state: object
  steps: jax.Array


def dart_threshold(epoch, *, c_max: float = 0.5, control_epochs: float = 100):
  """c_t = max(c_max − c_max·t/T', 0) at 0-based epoch t (the official ``train_models.py``:
  c_max = ``fosc_max`` = 0.5, T' = ``dynamic_epoch`` = 100)."""
  if control_epochs <= 0:
    raise ValueError(f'control_epochs must be > 0 (the FOSC control epochs T\'), got '
                     f'{control_epochs}.')
  return jnp.maximum(c_max - c_max * epoch / control_epochs, 0.0)


@attack_convention()
def dart_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, alpha, steps: int,
                threshold, min_steps: int = 0, loss: str = 'ce', train: bool = False,
                init: str = 'uniform', init_scale: float = 1.0,
                unroll: bool = False) -> DARTAttack:
  """L∞ PGD with a per-example FOSC stopping rule.

  From δ⁰ = `init_perturbation` (U(−ε, ε) clipped to the box by default), each
  of the `steps` iterations computes c(x + δ) = ε‖∇ℓ‖₁ − ⟨δ, ∇ℓ⟩ and moves only
  the examples with c > `threshold` (c_t of `dart_threshold`):
  δ ← box(Π_ε(δ + α·sign ∇ℓ)). An example with c ≤ c_t keeps its point (in eval
  mode it then never moves again: same point, same gradient). The first
  `min_steps` steps move every example (the official ``LinfPGDAttack.perturb``
  always takes its first step: `min_steps=1`). c_t = −∞ is plain PGD without
  early stopping (`pgd_attack`, ``freeze_misclassified=False``); c_t = +∞ returns
  δ⁰ (after `min_steps` PGD steps). ∇ℓ is each example's own loss gradient
  (FOSC's scale).

  `train`: the BatchNorm mode (`fat_jax.attacks`); `unroll` as in `pgd_attack`.
  """
  loss_fn = per_example_loss(loss)

  def one_step(k, carry):
    delta, st, taken = carry
    lg = loss_and_grad(apply_fn, params, st, x + delta, lambda z: loss_fn(z, y), train=train)
    moves = (fosc(x + delta, x, lg.grad, eps) > threshold) | (k < min_steps)
    moved = sign_step(x, delta, lg.grad, eps=eps, alpha=alpha)
    delta = jnp.where(per_example(moves, x), moved, delta)
    return delta, lg.state, taken + moves.astype(jnp.int32)

  delta = init_perturbation(jax.random.fold_in(key, 0), x, eps, init, init_scale)
  taken = jnp.zeros(x.shape[:1], jnp.int32)
  delta, state, taken = jax.lax.fori_loop(0, steps, one_step, (delta, state, taken),
                                          unroll=unroll)
  return DARTAttack(jax.lax.stop_gradient(delta), state, taken)
