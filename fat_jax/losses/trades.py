"""The TRADES objective (Zhang et al., ICML 2019), as `yaodongyu/TRADES trades.py` computes it.

    L = mean_i CE(f(x_i), y_i) + β·mean_i KL(p(x_i) ‖ p(x'_i)),   β = 6,

p = softmax ∘ f, x' the KL attack's point (`fat_jax.attacks.kl_attack`). The KL
is summed over classes and averaged over the batch (the official
``KLDivLoss(size_average=False) / batch_size``) and p(x) is not detached: the
gradient flows through both logits.
"""
from __future__ import annotations

from typing import NamedTuple

import chex
import jax

from fat_jax.losses.classification import cross_entropy, kl_divergence


class TRADESTerms(NamedTuple):
  natural: jax.Array   # mean CE(f(x), y)
  robust: jax.Array    # mean KL(p(x) ‖ p(x'))


def trades_loss(logits_clean: jax.Array, logits_adv: jax.Array, labels: jax.Array, *,
                beta: float) -> tuple[jax.Array, TRADESTerms]:
  """L = mean CE(f(x), y) + β·mean KL(p(x) ‖ p(x')) and its two terms."""
  chex.assert_equal_shape([logits_clean, logits_adv])
  natural = cross_entropy(logits_clean, labels).mean()
  robust = kl_divergence(logits_clean, logits_adv).mean()
  return natural + beta * robust, TRADESTerms(natural, robust)
