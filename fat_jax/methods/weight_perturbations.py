"""The weight perturbations, at most one per method: ``weights.apply(params, ...) -> (params,
undo, metrics)`` and ``weights.undo(params, paths, undo)``: `LAP` (kept), `AWP` (removed after
the optimiser step), on the parameter pytrees of `fat_jax.weight_perturbation`. Each is a frozen,
hashable dataclass (a static jit argument)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fat_jax.methods.records import Clock, StartPoint
from fat_jax.weight_perturbation import add_at_paths, awp_perturbation, lap_perturb


@dataclasses.dataclass(frozen=True)
class LAP:
  """LAP (ICML 2024): the optimiser's own update on the start-point gradient, per layer
  β·λ_l·‖w_l‖-scaled, added to the weights and kept (`weight_perturbation.lap_perturb`)."""
  beta: float
  gamma: float = 0.3
  ascent: bool = False      # labelled AWP-style variant; the official code descends
  needs_start = True

  def apply(self, params, *, start: StartPoint, loss_fn, tx, opt_state, paths, clock: Clock):
    del loss_fn, clock
    params, norms = lap_perturb(params, start.grad_params, tx, opt_state, paths=paths,
                                beta=self.beta, gamma=self.gamma, ascent=self.ascent)
    return params, None, {'lap_norm': norms}

  def undo(self, params, paths, undo):
    del paths, undo
    return params


@dataclasses.dataclass(frozen=True)
class AWP:
  """AWP (`csdongxian/AWP`): v_l = γ·‖w_l‖·∇_l/‖∇_l‖ on every kernel along ∇ of the training
  objective (train-mode BN, its statistics discarded, as the official proxy model), added for
  the step and removed after it; v = 0 during the first `warmup_epochs` epochs.

  The gradient is computed during the warm-up too (one pass per step, then discarded):
  under `lax.cond` XLA's CPU backend runs the convolutions an order of magnitude slower.
  """
  gamma: float
  warmup_epochs: int = 0
  needs_start = False

  def apply(self, params, *, start, loss_fn, tx, opt_state, paths, clock: Clock):
    del start, tx, opt_state
    active = clock.step >= self.warmup_epochs * clock.steps_per_epoch
    loss_grads = jax.tree.map(lambda g: jnp.where(active, g, 0.0), jax.grad(loss_fn)(params))
    deltas = awp_perturbation(params, loss_grads, paths, self.gamma)
    norm = jnp.sqrt(sum(jnp.sum(d ** 2) for d in deltas))
    return add_at_paths(params, paths, deltas), deltas, {'awp_norm': norm}

  def undo(self, params, paths, undo):
    return add_at_paths(params, paths, undo, sign=-1.0)
