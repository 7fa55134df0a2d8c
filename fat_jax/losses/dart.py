"""Dynamic AT's per-example loss weights (DART; Wang et al., ICML 2019, official code
`YisenWang/dynamic_adv_training`, `train_models.py`).

From its second epoch on (0-based epoch ≥ 1), the official loop weights each example's
training CE by that example's own CE at its DART point: ``model.predict`` (inference mode,
the weights before the update) gives p, the weight is w = max_c(−y_c·log(p_c + 10⁻¹²)) =
−log(p_y + 10⁻¹²) for one-hot y, and it enters ``train_on_batch`` as ``sample_weight``, a
constant.

The code runs on standalone Keras 2 with TensorFlow 1. Keras 2.2's
``weighted_masked_objective`` (keras-team/keras, ``keras/engine/training_utils.py``)
multiplies the per-example losses by the weights, divides them by the share of non-zero
weights and takes the mean: Σ_i w_i ℓ_i / #{i : w_i ≠ 0} — neither the weight sum nor, where
a weight is exactly 0, the batch size (tf.keras divides by N; keras-team/keras#12176). The
per-example loss is the official ``losses.cross_entropy`` on the softmax outputs, which clips
p to [10⁻⁷, 1 − 10⁻⁷] (`keras_cross_entropy`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.losses.classification import assert_logits_and_labels, cross_entropy

KERAS_EPSILON = 1e-7   # Keras' ``K.epsilon()``


def dart_example_weights(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """w_i = −log(softmax(z_i)_{y_i} + 10⁻¹²) (N,), without gradient: the official
  ``np.max(-batch_y * np.log(probs + 1e-12), axis=1)`` for one-hot labels. In float32 the
  10⁻¹² is absorbed unless p_y < 10⁻⁵, so an example with p_y = 1.0 exactly weighs 0."""
  assert_logits_and_labels(logits, labels)
  p_true = _true_class_probability(logits, labels)
  return jax.lax.stop_gradient(-jnp.log(p_true + 1e-12))


def _true_class_probability(logits: jax.Array, labels: jax.Array) -> jax.Array:
  probs = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
  return jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]


def keras_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """−log(clip(p_y, 10⁻⁷, 1 − 10⁻⁷)) per example (N,): the official ``losses.cross_entropy``
  (``tf.clip_by_value`` of the softmax outputs, bounds in float32). Where p_y is clipped the
  loss is that constant and its gradient 0; elsewhere it is the log-softmax CE."""
  assert_logits_and_labels(logits, labels)
  p_true = _true_class_probability(logits, labels)
  lo, hi = jnp.float32(KERAS_EPSILON), jnp.float32(1 - KERAS_EPSILON)
  clipped = (p_true < lo) | (p_true > hi)
  constant = -jnp.log(jax.lax.stop_gradient(jnp.clip(p_true, lo, hi)))
  return jnp.where(clipped, constant, cross_entropy(logits, labels))


def keras_weighted_mean(losses: jax.Array, weights: jax.Array) -> jax.Array:
  """Σ_i w_i ℓ_i / #{i : w_i ≠ 0}, Keras 2.2's reduction of ``fit(..., sample_weight=w)``
  (equal weights: the mean). All weights 0 gives 0 (Keras: 0/0)."""
  nonzero = jnp.sum(weights != 0).astype(losses.dtype)
  return jnp.sum(weights * losses) / jnp.maximum(nonzero, 1)
