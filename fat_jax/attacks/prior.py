"""The prior-guided FGSM step of FGSM-MEP (Jia et al. 2022, "Prior-Guided Adversarial
Initialization for Fast Adversarial Training"; `jiaxiaojunQAQ/FGSM-PGI FGSM_MEP.py`).

Each training example keeps a prior perturbation P and a momentum M across
epochs. With g = ∇_P ℓ(f(x + P)) (the gradient of the batch-mean loss):

  δ  = box(Π_ε(P + α·sign g))                 the training perturbation
  M' = g / ‖g‖₁ + μ·M                         ‖g‖₁ over the whole batch
  P' = box(Π_ε(P + α·sign M'))                the next epoch's prior

and every `reset_every` epochs P is re-drawn as Π_ε(α·sign u), u ~ U(−ε, ε),
and M set to 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.attacks.core import sign_step

TINY = 1e-30  # guards ‖g‖₁ = 0 (the official code divides by it unguarded)


def prior_reset(key, shape, *, eps, alpha) -> jax.Array:
  """A fresh prior Π_ε(α·sign u), u ~ U(−ε, ε): ±min(α, ε) per coordinate (not box-clipped)."""
  u = jax.random.uniform(key, shape, jnp.float32, -eps, eps)
  return jnp.clip(alpha * jnp.sign(u), -eps, eps)


def prior_guided_step(x, prior, momentum, grad, *, eps, alpha, decay):
  """(δ, P', M') of one FGSM-MEP step from the prior `prior` with input gradient `grad`."""
  momentum = grad / jnp.maximum(jnp.abs(grad).sum(), TINY) + decay * momentum
  delta = sign_step(x, prior, grad, eps=eps, alpha=alpha)
  next_prior = sign_step(x, prior, momentum, eps=eps, alpha=alpha)
  return delta, next_prior, momentum
