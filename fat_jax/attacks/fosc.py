"""First-Order Stationary Condition (FOSC) of an L∞ attack's point (Wang et al., ICML 2019,
"On the Convergence and Robustness of Adversarial Training").

For the inner maximisation max_{x ∈ X} ℓ(x) over X = {x : ‖x − x⁰‖∞ ≤ ε},

    c(xᵏ) = max_{x ∈ X} ⟨x − xᵏ, ∇ℓ(xᵏ)⟩ = ε‖∇ℓ(xᵏ)‖₁ − ⟨xᵏ − x⁰, ∇ℓ(xᵏ)⟩ ≥ 0,

zero exactly at a first-order stationary point of the constrained problem (the
[0, 1] box is not part of X, as in the paper). ∇ℓ is the gradient of each
example's own loss (the official code's ``tf.gradients`` of the per-example
loss vector), so c is on that loss's scale.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.attacks.core import ApplyFn
from fat_jax.attacks.eot import loss_and_grad
from fat_jax.losses import per_example_loss


def fosc(x_adv: jax.Array, x0: jax.Array, grad: jax.Array, eps) -> jax.Array:
  """Per-example c(xᵏ) = ε‖g‖₁ − ⟨xᵏ − x⁰, g⟩ with g = ∇ℓ(xᵏ), shape (N,)."""
  n = len(x_adv)
  g = grad.reshape(n, -1)
  return eps * jnp.abs(g).sum(axis=1) - ((x_adv - x0).reshape(n, -1) * g).sum(axis=1)


def fosc_at(apply_fn: ApplyFn, params, state, x, y, delta, *, eps, train: bool = False,
            loss: str = 'ce') -> jax.Array:
  """FOSC of the point x + δ of the ε-ball around x (one forward, one backward), shape (N,).

  The monitor metric: the mean over a batch of a training attack's points measures how
  well that attack solved the inner maximisation (0: stationary).
  """
  loss_fn = per_example_loss(loss)
  lg = loss_and_grad(apply_fn, params, state, x + delta, lambda z: loss_fn(z, y), train=train)
  return fosc(x + delta, x, lg.grad, eps)
