"""Classification losses used by training and by the attacks."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def _at_least_f32(logits: jax.Array) -> jax.Array:
  """Low-precision (bf16/f16) logits are upcast; float64 stays float64."""
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def assert_logits_and_labels(logits: jax.Array, labels: jax.Array) -> None:
  """Shapes (N, C) and (N,), checked when traced (no run-time cost)."""
  chex.assert_rank([logits, labels], [2, 1])
  chex.assert_equal_shape_prefix([logits, labels], prefix_len=1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy −log softmax(z)_y."""
  assert_logits_and_labels(logits, labels)
  log_probs = jax.nn.log_softmax(_at_least_f32(logits))
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example cross-entropy −Σ_c t_c log softmax(z)_c against a distribution t (N, C)."""
  chex.assert_rank(logits, 2)
  chex.assert_equal_shape([logits, targets])
  return -(targets * jax.nn.log_softmax(_at_least_f32(logits))).sum(axis=-1)


def smoothed_labels(labels: jax.Array, num_classes: int, true_prob: float) -> jax.Array:
  """Label smoothing: probability `true_prob` on the label, the rest spread evenly (N, C)."""
  one_hot = jax.nn.one_hot(labels, num_classes)
  return one_hot * true_prob + (1 - one_hot) * (1 - true_prob) / (num_classes - 1)


def kl_divergence(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """Per-example KL(p ‖ q) = Σ_c p_c (log p_c − log q_c) with p = softmax(logits_p),
  q = softmax(logits_q); gradient flows through both."""
  chex.assert_rank(logits_p, 2)
  chex.assert_equal_shape([logits_p, logits_q])
  log_p = jax.nn.log_softmax(_at_least_f32(logits_p))
  log_q = jax.nn.log_softmax(_at_least_f32(logits_q))
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def margin_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example CW margin max_{i≠y} z_i − z_y (positive ⇔ misclassified)."""
  assert_logits_and_labels(logits, labels)
  logits = _at_least_f32(logits)
  true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return others.max(axis=-1) - true


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example 0/1 correctness (float32)."""
  assert_logits_and_labels(logits, labels)
  return (logits.argmax(axis=-1) == labels).astype(jnp.float32)


LOSSES = {'ce': cross_entropy, 'margin': margin_loss}


def per_example_loss(name: str):
  """The per-example loss called `name` ('ce' or 'margin')."""
  if name not in LOSSES:
    raise ValueError(f'Unknown attack loss {name!r}; known: {sorted(LOSSES)}.')
  return LOSSES[name]
