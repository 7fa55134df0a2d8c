"""The training loss of FGSM-MEP (`jiaxiaojunQAQ/FGSM-PGI FGSM_MEP.py`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.losses.classification import soft_cross_entropy

MEP_TRUE_PROB = 0.6   # true-class probability of the smoothed labels (the official `--factor`)
MEP_LAMBDA = 10.0     # weight λ of the squared logit difference


def mep_loss(logits_adv: jax.Array, logits_prior: jax.Array, targets: jax.Array, *,
             lam: float) -> jax.Array:
  """mean soft-CE(f(x + δ), ỹ) + λ·mean((f(x + δ) − f(x + P))²).

  ỹ are the smoothed labels (`smoothed_labels`, true-class probability
  `MEP_TRUE_PROB`); the squared difference is averaged over examples and classes
  (torch ``MSELoss``) and differentiates through both logits (the official code
  does not detach f(x + P)); the official λ is `MEP_LAMBDA`.
  """
  pairing = jnp.mean((logits_adv.astype(jnp.float32) - logits_prior.astype(jnp.float32)) ** 2)
  return soft_cross_entropy(logits_adv, targets).mean() + lam * pairing
