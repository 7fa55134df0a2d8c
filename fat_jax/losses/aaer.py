"""AAER: Abnormal Adversarial Example Regularisation (Lin et al., NeurIPS 2023),
as the official code `tmllab/2023_NeurIPS_AAER` computes it (docs/protocol.md §2.2).

An abnormal adversarial example (AAE) is one whose loss the attack step
*decreased*: A_i = [ℓ_i(x+η) > ℓ_i(x+δ)]. With m = |A| of n examples, for
0 < m < n:

    R = λ1·(m/n)·(λ2·C_A + λ3·relu(V_A − V_N)),
    C_A = mean_{i∈A} (ℓ_i(x+η) − ℓ_i(x+δ)),
    V_A = mean_{i∈A} ‖f(x+η)_i − f(x+δ)_i‖²,   V_N = the same over the normal examples,

and R = 0 otherwise. The logits at x+η are a constant (no gradient), V_N is
a constant, and in the official code C_A is a constant too (both losses are
detached), so only the λ3 term trains. `differentiable_loss_variation=True`
keeps the gradient of C_A through ℓ(x+δ) (the reading of the paper's equation).
"""
from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from fat_jax.losses.classification import cross_entropy


class AAERStats(NamedTuple):
  """Per-batch AAER statistics (the AAE fraction is the paper's CO indicator)."""
  aae_fraction: jax.Array   # m / n
  loss_variation: jax.Array  # C_A (0 when m = 0)
  abnormal_variation: jax.Array  # V_A (0 when m = 0)
  normal_variation: jax.Array    # V_N (0 when m = n)
  regularizer: jax.Array


def _masked_mean(values, mask):
  count = mask.sum()
  return jnp.where(count > 0, jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1), 0.0)


def aaer_regularizer(logits_init, logits_adv, labels, *, lambda1: float, lambda2: float,
                     lambda3: float, differentiable_loss_variation: bool = False):
  """The AAER term R (add it to mean CE at x+δ) and its `AAERStats`.

  `logits_init` are the logits at the start point x+η (treated as constants),
  `logits_adv` those at the adversarial point x+δ (gradient flows through them).
  """
  chex.assert_equal_shape([logits_init, logits_adv])
  logits_init = jax.lax.stop_gradient(logits_init)
  loss_before = cross_entropy(logits_init, labels)
  loss_after = cross_entropy(logits_adv, labels)
  abnormal = loss_before > jax.lax.stop_gradient(loss_after)
  n = labels.shape[0]
  m = abnormal.sum()
  variation = jnp.sum((logits_init - logits_adv) ** 2, axis=-1)
  v_abnormal = _masked_mean(variation, abnormal)
  v_normal = jax.lax.stop_gradient(_masked_mean(variation, ~abnormal))
  after = loss_after if differentiable_loss_variation else jax.lax.stop_gradient(loss_after)
  c_abnormal = _masked_mean(loss_before - after, abnormal)
  reg = lambda1 * (m / n) * (lambda2 * c_abnormal + lambda3 * jax.nn.relu(v_abnormal - v_normal))
  reg = jnp.where((m > 0) & (m < n), reg, 0.0)
  stats = AAERStats(m / n, c_abnormal, v_abnormal, v_normal, reg)
  return reg, jax.tree.map(jax.lax.stop_gradient, stats)
