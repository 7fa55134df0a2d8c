"""Difference-of-logits-ratio losses of AutoAttack (Croce & Hein 2020, docs/protocol.md §4.2).

With the logits of one example sorted decreasingly, z_π1 ≥ z_π2 ≥ …:

  DLR(z, y)      = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e−12)
  DLR_T(z, y, t) = −(z_y − z_t) / (z_π1 − ½(z_π3 + z_π4) + 1e−12)

Both are invariant to shifting and scaling the logits, so they cannot be masked
by a saturated softmax. Positive DLR ⇔ misclassified.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from fat_jax.losses.classification import assert_logits_and_labels


def _sorted_and_true(logits: jax.Array, labels: jax.Array, min_classes: int):
  assert_logits_and_labels(logits, labels)
  if logits.shape[-1] < min_classes:
    raise ValueError(f'This DLR loss needs at least {min_classes} classes, got '
                     f'{logits.shape[-1]}.')
  logits = logits.astype(jnp.float32)
  top = -jnp.sort(-logits, axis=-1)  # decreasing
  true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  return logits, top, true


def dlr_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example DLR −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e−12); needs ≥ 3 classes."""
  logits, top, true = _sorted_and_true(logits, labels, 3)
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return -(true - others.max(axis=-1)) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example targeted DLR −(z_y − z_t) / (z_π1 − ½(z_π3 + z_π4) + 1e−12); needs ≥ 4 classes."""
  logits, top, true = _sorted_and_true(logits, labels, 4)
  chex.assert_equal_shape([labels, targets])
  target = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  return -(true - target) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)
