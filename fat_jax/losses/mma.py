"""The MMA objective (Ding et al., ICLR 2020, "MMA Training: Direct Input Space Margin
Maximization through Adversarial Training") in the surrogate-loss form of the
adversarial-robustness lecture's table:

    L = (1/N) Σ_i [ 1{f(x_i) = y_i}·CE(f(x̂'_i), y_i) + 1{f(x_i) ≠ y_i}·CE(f(x_i), y_i) ],

x̂'_i the adversarial point (MMA: the closest misclassified point on the margin).
Correctly classified points are trained at their adversarial point, the others
at the clean point. The indicator is a prediction and carries no gradient.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fat_jax.losses.classification import cross_entropy


class MMATerms(NamedTuple):
  adversarial: jax.Array   # (1/N) Σ over correctly classified points of CE(f(x̂'), y)
  clean: jax.Array         # (1/N) Σ over misclassified points of CE(f(x), y)
  correct: jax.Array       # share of clean points classified correctly


def mma_loss(logits_clean: jax.Array, logits_adv: jax.Array,
             labels: jax.Array) -> tuple[jax.Array, MMATerms]:
  """L = mean_i [CE(f(x̂'_i), y_i) if f(x_i) = y_i else CE(f(x_i), y_i)] and its two parts."""
  correct = jax.lax.stop_gradient(logits_clean.argmax(axis=-1) == labels)
  n = len(labels)
  adversarial = jnp.where(correct, cross_entropy(logits_adv, labels), 0.0).sum() / n
  clean = jnp.where(correct, 0.0, cross_entropy(logits_clean, labels)).sum() / n
  return adversarial + clean, MMATerms(adversarial, clean, correct.mean())
