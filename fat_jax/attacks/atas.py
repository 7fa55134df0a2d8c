"""ATAS: FGSM with a per-example adaptive step size (Huang et al., "Fast Adversarial
Training with Adaptive Step Size", TIP 2023; `HuangZhiChao95/ATAS adv_attack.py`).

Each training example keeps its previous perturbation (the start of its next
step, re-drawn U(−ε, ε) every 10 epochs) and a running squared input-gradient
norm v. With g_i the gradient of the batch-mean CE at the start point:

    v_i ← (1 − β)·‖g_i‖² + β·v_i,          β = 0.5
    α_i = clip(s / (1 + √v_i / c), α_min, α_max),   c = 0.01,

then δ_i = box(Π_ε(η_i + α_i·sign g_i)). The official code fixes s = 16/255,
α_min = 4/255 and α_max = 14/255 whatever ε; fat_jax takes them as multiples
of ε (2, 0.5, 1.75: the same at ε = 8/255). Large-gradient examples, whose
loss surface is sharp, take small steps. g is the gradient of the batch mean,
so c depends on the batch size (128 in the official recipe).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def atas_step_sizes(grad: jax.Array, grad_norm: jax.Array, *, c: float, beta: float,
                    scale: float, min_step: float, max_step: float):
  """(α, v'): per-example step sizes (N,) and the updated running squared norms (N,)."""
  squared = jnp.sum(grad.reshape(grad.shape[0], -1).astype(jnp.float32) ** 2, axis=1)
  grad_norm = (1 - beta) * squared + beta * grad_norm
  steps = jnp.clip(scale / (1 + jnp.sqrt(grad_norm) / c), min_step, max_step)
  return steps, grad_norm
