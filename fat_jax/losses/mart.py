"""The MART objective (Wang et al., ICLR 2020), as `YisenWang/MART mart.py` computes it.

With p' = softmax f(x'), p = softmax f(x) and ŷ_i = argmax_{c≠y_i} p'_ic (the
most likely wrong class at x'):

    BCE = mean_i CE(f(x'_i), y_i) − mean_i log(1.0001 − p'_{i,ŷ_i} + 1e−12)
    L   = BCE + β·mean_i KL_i·(1.0000001 − p_{i,y_i}),
    KL_i = Σ_c p_ic (log p_ic − log(p'_ic + 1e−12)),                    β = 5 (ResNet-18),

the constants as in the official code; nothing is detached (the weight
1 − p_y(x) carries gradient too).
"""
from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from fat_jax.losses.classification import cross_entropy


class MARTTerms(NamedTuple):
  boosted_ce: jax.Array   # BCE at x'
  robust: jax.Array       # mean misclassification-weighted KL


def mart_loss(logits_clean: jax.Array, logits_adv: jax.Array, labels: jax.Array, *,
              beta: float) -> tuple[jax.Array, MARTTerms]:
  """L = BCE(p', y) + β·mean KL(p ‖ p')·(1 − p_y) and its two terms."""
  chex.assert_equal_shape([logits_clean, logits_adv])
  adv_probs = jax.nn.softmax(logits_adv.astype(jnp.float32))
  nat_probs = jax.nn.softmax(logits_clean.astype(jnp.float32))
  true_class = jax.nn.one_hot(labels, adv_probs.shape[-1], dtype=bool)
  wrong = jnp.where(true_class, -jnp.inf, adv_probs).argmax(axis=-1)
  wrong_prob = jnp.take_along_axis(adv_probs, wrong[:, None], axis=-1)[:, 0]
  boosted_ce = (cross_entropy(logits_adv, labels).mean()
                - jnp.log(1.0001 - wrong_prob + 1e-12).mean())
  kl = jnp.sum(xlogy(nat_probs, nat_probs) - nat_probs * jnp.log(adv_probs + 1e-12), axis=-1)
  true_prob = jnp.take_along_axis(nat_probs, labels[:, None], axis=-1)[:, 0]
  robust = jnp.mean(kl * (1.0000001 - true_prob))
  return boosted_ce + beta * robust, MARTTerms(boosted_ce, robust)
