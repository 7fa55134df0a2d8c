"""Building blocks of L∞ attacks in pixel space [0, 1].

An apply function has the signature of `fat_jax.models.Model.apply`:
``apply_fn(params, state, x, train) -> (logits, new_state, features)``.
``train`` selects the BatchNorm mode explicitly (SPEC §1.5): with ``train=True``
the forward uses batch statistics and returns updated running statistics.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fat_jax.losses.input_gradient import InputGradient, input_gradient  # noqa: F401 (re-exported)

ApplyFn = Callable  # (params, state, x, train) -> (logits, new_state, features)

INITS = ('zero', 'uniform', 'normal')


class Attack(NamedTuple):
  """An attack's result: the perturbation and the model state after its forwards."""
  delta: jax.Array
  state: object


def clip_to_box(x: jax.Array, delta: jax.Array) -> jax.Array:
  """Clip δ so that x + δ ∈ [0, 1]."""
  return jnp.clip(x + delta, 0.0, 1.0) - x


def project_linf(delta: jax.Array, eps) -> jax.Array:
  """Π_ε: clip δ to [−ε, ε]."""
  return jnp.clip(delta, -eps, eps)


def check_eps(eps: float) -> None:
  """Reject a negative radius given as a Python number (checked before tracing)."""
  if isinstance(eps, (int, float)) and eps < 0:
    raise ValueError(f'The L∞ radius must be ≥ 0, got eps={eps}.')


def init_perturbation(key, x: jax.Array, eps, init: str = 'zero', scale: float = 1.0) -> jax.Array:
  """Initial point η: 0; U(−scale·ε, scale·ε) clipped to the box ('uniform'); or
  scale·N(0, I), not clipped ('normal': TRADES and MART start from x + 0.001·N(0, I))."""
  if init == 'zero':
    return jnp.zeros_like(x)
  if init == 'uniform':
    eta = jax.random.uniform(key, x.shape, x.dtype, -scale * eps, scale * eps)
    return clip_to_box(x, eta)
  if init == 'normal':
    return scale * jax.random.normal(key, x.shape, x.dtype)
  raise ValueError(f'Unknown perturbation init {init!r}; known: {INITS}.')


def sign_step(x, delta, grad, *, eps, alpha, project: bool = True) -> jax.Array:
  """δ ← box(Π_ε(δ + α·sign g)); Π_ε only when `project`."""
  delta = delta + alpha * jnp.sign(grad)
  if project:
    delta = project_linf(delta, eps)
  return clip_to_box(x, delta)
