"""∇_δ of a per-example loss at x + δ: the one gradient the attacks step along and GradAlign
aligns.

An apply function has the signature of `fat_jax.models.Model.apply`:
``apply_fn(params, state, x, train) -> (logits, new_state, features)``; ``train`` selects the
BatchNorm mode explicitly (batch statistics and updated running statistics when True).
"""
from __future__ import annotations

from typing import NamedTuple

import chex
import jax

from fat_jax.losses.classification import per_example_loss


class InputGradient(NamedTuple):
  """∇_δ of the mean loss at x + δ, with that forward's outputs."""
  grad: jax.Array
  logits: jax.Array
  state: object
  features: dict


def input_gradient(apply_fn, params, state, x, y, delta, *, train: bool,
                   loss: str = 'ce') -> InputGradient:
  """Gradient of the mean per-example `loss` w.r.t. δ at x + δ (one forward, one backward)."""
  chex.assert_equal_shape([x, delta])
  loss_fn = per_example_loss(loss)

  def objective(d):
    logits, new_state, features = apply_fn(params, state, x + d, train)
    return loss_fn(logits, y).mean(), (logits, new_state, features)

  grad, (logits, new_state, features) = jax.grad(objective, has_aux=True)(delta)
  return InputGradient(grad, logits, new_state, features)
