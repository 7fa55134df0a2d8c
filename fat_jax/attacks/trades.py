"""TRADES' inner maximisation: the KL attack (`yaodongyu/TRADES trades.py`)."""
from __future__ import annotations

import jax

from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import Attack, ApplyFn, init_perturbation, sign_step
from fat_jax.losses import kl_divergence


@attack_convention(labelled=False)
def kl_attack(apply_fn: ApplyFn, params, state, x, key, *, eps, alpha, steps: int,
              init: str = 'normal', init_scale: float = 0.001, train: bool = False,
              unroll: bool = False) -> Attack:
  """From η = 0.001·N(0, I) (not clipped), `steps` updates
  δ ← box(Π_ε(δ + α·sign ∇_δ Σ_i KL(p(x_i) ‖ p(x_i + δ_i)))),  p = softmax ∘ f.

  The official code runs it in eval mode (`train=False`) and recomputes the
  constant p(x) at every step; here p(x) is computed once, and with
  `train=True` (batch statistics) each step still runs the clean forward after
  the adversarial one, so the running statistics are updated as the official
  loop would. TRADES: ε = 0.031, α = 0.007, 10 steps. `unroll`: as `pgd_attack`'s.
  """
  clean_logits, _, _ = apply_fn(params, state, x, train)
  clean_logits = jax.lax.stop_gradient(clean_logits)

  def one_step(_, carry):
    delta, st = carry

    def objective(d):
      logits, new_state, _ = apply_fn(params, st, x + d, train)
      return kl_divergence(clean_logits, logits).sum(), new_state

    grad, st = jax.grad(objective, has_aux=True)(delta)
    if train:
      st = apply_fn(params, st, x, True)[1]
    return sign_step(x, delta, grad, eps=eps, alpha=alpha), st

  delta = init_perturbation(key, x, eps, init, init_scale)
  delta, state = jax.lax.fori_loop(0, steps, one_step, (delta, state), unroll=unroll)
  return Attack(jax.lax.stop_gradient(delta), state)
