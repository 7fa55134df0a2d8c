"""The Minimum-Margin (MM) attack (Gao et al., ICML 2022, "Fast and Reliable Evaluation of
Adversarial Robustness with Minimum-Margin Attack"), following the authors' code
``attack_generator.py`` (``mm_loss``, ``eval_robust_mm_sequential``) and ``mm_attack.py``
(``perturb``) of their MM-Attack release.

Per example, with z the logits and the targets t₁, t₂, …, t_k the classes ranked 2nd, 3rd, …,
(k+1)-th by the clean logits (the Sequential TArget Ranking Selection, STARS):

  MM(z, y, t) = −max(z_y − z_t + κ, 0),  κ = 50 (the code's ``confidence``),

the minimum margin z_y − z_t on the raw logits, clipped far beyond the decision boundary. For
i = 1, …, k in turn, one APGD-T run (``APGDAttack_targeted``, 1 restart, ρ = 0.75, the
`fat_jax.attacks.apgd` loop) maximises MM(·, y, t_i) on the points the runs before left robust.
The paper's settings: MM-3 (k = 3, 20 iterations), MM-9 (k = 9, 20 iterations), MM+ (k = 9,
100 iterations); ``eval_robust_mm_sequential`` and its main script use them, with ε = 0.031.
The authors call their own copy of APGD-T (``attack_apgd.py``, ``loss='mm'``); here it is
AutoAttack's loop on ``mm_loss`` (docs/deviations.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.attacks.apgd import _apgd_runs, _misclassified_fn, top_targets
from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import Attack, ApplyFn
from fat_jax.attacks.eot import loss_and_grad
from fat_jax.losses.classification import assert_logits_and_labels

MM_CONFIDENCE = 50.0


def mm_loss(logits: jax.Array, labels: jax.Array, targets: jax.Array,
            confidence: float = MM_CONFIDENCE) -> jax.Array:
  """Per-example MM loss −max(z_y − z_t + κ, 0) (the authors' ``mm_loss``, not summed)."""
  assert_logits_and_labels(logits, labels)
  logits = logits.astype(jnp.float32)
  true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  target = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  return -jnp.maximum(true - target + confidence, 0.0)


@attack_convention()
def mm_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, steps: int = 20,
              n_target_classes: int = 3, rho: float = 0.75, norm: str = 'Linf',
              train: bool = False) -> Attack:
  """MM-`n_target_classes` with `steps` APGD iterations per target in the `norm` ball ('Linf'
  or 'L2'): the module's loop, on a deterministic model.

  Examples misclassified at x are not attacked (δ = 0); target i runs only on examples the
  runs before left robust, from the ε-sphere start of APGD with the key ``fold_in(key', i)``.
  Per example: the first misclassified iterate found, else the highest-MM-loss point over the
  targets (the reference keeps the last target's APGD output there; the robust flags are the
  same). Passes per example: 1 + k·(steps + 1) forwards, k·(steps + 1) backwards.
  `train`: the BatchNorm mode (`fat_jax.attacks`).
  """
  if steps < 1 or n_target_classes < 1:
    raise ValueError(f'mm_attack needs steps ≥ 1 and n_target_classes ≥ 1, got steps={steps}, '
                     f'n_target_classes={n_target_classes}.')
  _, key = jax.random.split(key)   # the key layout of `apgd_targeted_attack`
  logits, state, _ = apply_fn(params, state, x, train)
  targets = top_targets(logits, n_target_classes)

  def gradient_for_run(r):
    def gradient(delta, _key, st):
      loss_fn = lambda z: mm_loss(z, y, targets[:, r])
      return loss_and_grad(apply_fn, params, st, x + delta, loss_fn, train=train)
    return gradient

  misclassified = _misclassified_fn(y, False)
  delta, state = _apgd_runs(gradient_for_run, misclassified, x, key, misclassified(logits),
                            state, runs=n_target_classes, eps=eps, steps=steps, rho=rho,
                            norm=norm)
  return Attack(delta, state)
