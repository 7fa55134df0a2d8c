"""The Carlini–Wagner L2 attack (Carlini & Wagner, IEEE S&P 2017, "Towards Evaluating the
Robustness of Neural Networks"), untargeted, as `carlini/nn_robust_attacks`
``l2_attack.py`` runs it, on images in [0, 1].

Change of variables x' = (tanh(x_w + m) + 1)/2 with x_w = artanh((2x − 1)·0.999999),
so that x' stays in the box, and for each example Adam on the modifier m minimises

    ‖x' − x̃‖₂² + c·max(z_y(x') − max_{k≠y} z_k(x') + κ, 0),    x̃ = (tanh(x_w) + 1)/2,

(summed over the batch) for `max_iterations` steps (learning rate 0.01, m = 0 and
Adam reset at each c), stopping early when the total loss has not fallen by
0.01% over a tenth of the iterations. A binary search over c per example
(`binary_search_steps` = 9 values from c = 10⁻³: ×10 until a success, then
bisection) trades distance for success; the smallest-L2 misclassified x' seen at
any iterate is kept. Defaults are the reference's, except `max_iterations`
(10 000 there).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import ApplyFn, per_example

NOT_FOUND = 1e10  # the reference's "no adversarial example yet" distance


class CWResult(NamedTuple):
  """δ of the smallest-L2 adversarial example found (0 where none was), the state and
  its squared L2 distance (`NOT_FOUND` where none was)."""
  delta: jax.Array
  state: object
  l2_squared: jax.Array


@attack_convention(keyed=False)
def cw_l2_attack(apply_fn: ApplyFn, params, state, x, y, *, confidence: float = 0.0,
                 learning_rate: float = 0.01, binary_search_steps: int = 9,
                 max_iterations: int = 1000, initial_const: float = 1e-3,
                 abort_early: bool = True, train: bool = False) -> CWResult:
  """Untargeted C&W-L2 with κ = `confidence` and a per-example binary search over c.

  An iterate counts as adversarial when z_y + κ < max_{k≠y} z_k (with κ = 0: it is
  misclassified). `train`: the BatchNorm mode (`fat_jax.attacks`).
  """
  if max_iterations < 1 or binary_search_steps < 1:
    raise ValueError('C&W needs max_iterations ≥ 1 and binary_search_steps ≥ 1, got '
                     f'{max_iterations} and {binary_search_steps}.')
  n = len(x)
  x_w = jnp.arctanh((2.0 * x - 1.0) * 0.999999)
  x_box = (jnp.tanh(x_w) + 1.0) / 2.0
  optimizer = optax.adam(learning_rate)
  check_every = max(max_iterations // 10, 1)

  def objective(modifier, const, st):
    x_adv = (jnp.tanh(x_w + modifier) + 1.0) / 2.0
    logits, new_state, _ = apply_fn(params, st, x_adv, train)
    true = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    real = jnp.where(true, logits, 0.0).sum(-1)
    other = jnp.where(true, -jnp.inf, logits).max(-1)
    l2 = ((x_adv - x_box) ** 2).reshape(n, -1).sum(-1)
    total = l2.sum() + (const * jnp.maximum(real - other + confidence, 0.0)).sum()
    return total, (l2, real + confidence < other, x_adv, new_state)

  value_and_grad = jax.value_and_grad(objective, has_aux=True)

  def search(outer, carry):
    const, lower, upper, best_l2, best_adv, st = carry
    const = jnp.where((binary_search_steps >= 10) & (outer == binary_search_steps - 1),
                      upper, const)  # the reference repeats its search at the upper bound

    def iterate(inner):
      i, modifier, opt_state, prev, _, found, best_l2, best_adv, st = inner
      (total, (l2, success, x_adv, st)), grad = value_and_grad(modifier, const, st)
      check = abort_early & (i % check_every == 0)
      stop = check & (total > prev * 0.9999)
      prev = jnp.where(check, total, prev)
      better = success & ~stop
      found = found | better
      improved = better & (l2 < best_l2)
      best_l2 = jnp.where(improved, l2, best_l2)
      best_adv = jnp.where(per_example(improved, x), x_adv, best_adv)
      updates, opt_state = optimizer.update(grad, opt_state)
      return (i + 1, optax.apply_updates(modifier, updates), opt_state, prev, stop, found,
              best_l2, best_adv, st)

    def keep_going(inner):
      return (inner[0] < max_iterations) & ~inner[4]

    modifier = jnp.zeros_like(x)
    inner = (0, modifier, optimizer.init(modifier), jnp.asarray(1e6, jnp.float32),
             jnp.array(False), jnp.zeros((n,), bool), best_l2, best_adv, st)
    *_, found, best_l2, best_adv, st = jax.lax.while_loop(keep_going, iterate, inner)
    upper = jnp.where(found, jnp.minimum(upper, const), upper)
    lower = jnp.where(found, lower, jnp.maximum(lower, const))
    const = jnp.where(upper < 1e9, (lower + upper) / 2.0, jnp.where(found, const, const * 10.0))
    return const, lower, upper, best_l2, best_adv, st

  carry = (jnp.full((n,), initial_const, jnp.float32), jnp.zeros((n,), jnp.float32),
           jnp.full((n,), NOT_FOUND, jnp.float32), jnp.full((n,), NOT_FOUND, jnp.float32), x,
           state)
  *_, best_l2, best_adv, state = jax.lax.fori_loop(0, binary_search_steps, search, carry)
  return CWResult(jax.lax.stop_gradient(best_adv - x), state, best_l2)
