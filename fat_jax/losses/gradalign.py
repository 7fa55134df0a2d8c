"""GradAlign (Andriushchenko & Flammarion, NeurIPS 2020; `tml-epfl/understanding-fast-adv-training`).

    R = λ·(1 − mean_i cos(∇_x ℓ(x_i), ∇_η ℓ(x_i + η_i))),  η ~ U(−ε, ε) (not box-clipped),

the first gradient a constant, the second differentiated through (double
backprop), the mean over the examples whose two gradients are both non-zero. With the FGSM
attack the official first gradient is taken through ``clamp(X + δ, 0, 1)`` at δ = 0
(`gradient_through_box_clamp`); the second one has no clamp.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from fat_jax.losses.input_gradient import input_gradient


def gradalign_lambda(eps: float) -> float:
  """The CIFAR-10 rule of the paper's code: λ = 0.02·10^(ε·255/8) (0.2 at 8/255, 2.0 at 16/255)."""
  return 0.02 * 10 ** (eps * 255 / 8)


def gradient_through_box_clamp(grad, x):
  """∇_δ ℓ(f(clamp(x + δ, 0, 1))) at δ = 0, given ∇_x ℓ(f(x)).

  The official ``utils.clamp`` is ``torch.max(torch.min(X, 1), 0)``; torch's binary min/max
  send half of the gradient to each side of a tie (since pytorch/pytorch#59669), so a pixel
  exactly 0 or 1 keeps half of its gradient and every other pixel of [0, 1] all of it.
  """
  chex.assert_equal_shape([grad, x])
  return jnp.where((x == 0) | (x == 1), 0.5 * grad, grad)


def cosine_alignment(grad_clean, grad_random):
  """Per-example cosine between flattened gradients, and the mask of examples where both ≠ 0."""
  chex.assert_equal_shape([grad_clean, grad_random])
  g1 = grad_clean.reshape(grad_clean.shape[0], -1)
  g2 = grad_random.reshape(grad_random.shape[0], -1)
  n1, n2 = jnp.linalg.norm(g1, axis=1), jnp.linalg.norm(g2, axis=1)
  valid = (n1 != 0) & (n2 != 0)
  cos = jnp.sum(g1 * g2, axis=1) / jnp.where(valid, n1 * n2, 1.0)
  return cos, valid


def gradalign_regularizer(apply_fn, params, state, x, y, key, *, eps: float, grad_clean,
                          lam: float, train: bool = True):
  """R above, differentiable w.r.t. `params`; returns ``(R, (new_state, mean_cos))``.

  `grad_clean` is ∇_x ℓ at x (e.g. the FGSM gradient from a zero start), used as
  a constant. The random-point forward runs in BatchNorm mode `train`.
  """
  chex.assert_equal_shape([x, grad_clean])
  eta = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  g = input_gradient(apply_fn, params, state, x, y, eta, train=train)
  cos, valid = cosine_alignment(jax.lax.stop_gradient(grad_clean), g.grad)
  mean_cos = jnp.sum(jnp.where(valid, cos, 0.0)) / jnp.maximum(valid.sum(), 1)
  return lam * (1.0 - mean_cos), (g.state, jax.lax.stop_gradient(mean_cos))
