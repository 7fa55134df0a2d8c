"""MI-FGSM, the momentum iterative FGSM (Dong et al., CVPR 2018, "Boosting Adversarial
Attacks with Momentum", Algorithm 1).

From x⁰ = x, for t = 0 … T−1:

    g_{t+1} = μ·g_t + ∇ℓ(x^t)/‖∇ℓ(x^t)‖₁,     x^{t+1} = box(Π_ε(x^t + α·sign g_{t+1})),

with μ = 1.0, T = 10, α = ε/T (the paper's settings). ‖·‖₁ is per example; μ = 0
is iterated FGSM (PGD from x without random start).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import Attack, ApplyFn, per_example, sign_step
from fat_jax.attacks.eot import loss_and_grad
from fat_jax.losses import per_example_loss


@attack_convention(keyed=False)
def mifgsm_attack(apply_fn: ApplyFn, params, state, x, y, *, eps, steps: int = 10,
                  alpha=None, momentum: float = 1.0, loss: str = 'ce', train: bool = False,
                  unroll: bool = False) -> Attack:
  """L∞ MI-FGSM: `steps` signed steps of size `alpha` (default ε/steps) along the momentum
  of L1-normalised gradients. `train`: the BatchNorm mode (`fat_jax.attacks`); `unroll` as in
  `pgd_attack`."""
  alpha = eps / steps if alpha is None else alpha
  loss_fn = per_example_loss(loss)

  def one_step(_, carry):
    delta, velocity, st = carry
    lg = loss_and_grad(apply_fn, params, st, x + delta, lambda z: loss_fn(z, y), train=train)
    l1 = jnp.abs(lg.grad).reshape(len(x), -1).sum(axis=1)
    velocity = momentum * velocity + lg.grad / per_example(jnp.maximum(l1, 1e-12), x)
    return sign_step(x, delta, velocity, eps=eps, alpha=alpha), velocity, lg.state

  zeros = jnp.zeros_like(x)
  delta, _, state = jax.lax.fori_loop(0, steps, one_step, (zeros, zeros, state), unroll=unroll)
  return Attack(jax.lax.stop_gradient(delta), state)
