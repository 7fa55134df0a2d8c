"""Building blocks of L∞ and L2 attacks in pixel space [0, 1].

An apply function has the signature of `fat_jax.models.Model.apply`:
``apply_fn(params, state, x, train) -> (logits, new_state, features)``.
``train`` is the BatchNorm mode (`fat_jax.attacks`); every attack also takes a plain
``f(x) -> logits`` (`fat_jax.attacks.convention`).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fat_jax.losses.broadcast import per_example  # noqa: F401 (re-exported)
from fat_jax.losses.input_gradient import InputGradient, input_gradient  # noqa: F401 (re-exported)

ApplyFn = Callable  # (params, state, x, train) -> (logits, new_state, features)

log = logging.getLogger('fat_jax')

ATTACK_STARTS = ('zero', 'uniform', 'normal')   # the initial points η of `init_perturbation`
THREAT_MODELS = ('Linf', 'L2')
PIXEL_UNITS_WARNING = 0.5  # ε above this on [0, 1] images: likely given in 0–255 units


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


def l2_norm(v: jax.Array) -> jax.Array:
  """‖v_i‖₂ of each example (row of the leading axis), shape (N,)."""
  return jnp.sqrt((v ** 2).reshape(len(v), -1).sum(axis=1))


def normalize_l2(v: jax.Array) -> jax.Array:
  """v_i / (‖v_i‖₂ + 1e−12) per example (AutoAttack's ``normalize``)."""
  return v / (per_example(l2_norm(v), v) + 1e-12)


def project_l2(delta: jax.Array, eps) -> jax.Array:
  """Π_ε in L2, written as AutoAttack does: δ/(‖δ‖₂ + 1e−12)·min(ε, ‖δ‖₂) per example."""
  return normalize_l2(delta) * jnp.minimum(eps, per_example(l2_norm(delta), delta))


def check_norm(norm: str) -> None:
  """Reject a threat model other than 'Linf' and 'L2'."""
  if norm not in THREAT_MODELS:
    raise ValueError(f'Unknown norm={norm!r}; known threat models: {THREAT_MODELS}.')


def eps_problem(eps, field: str = 'eps', norm: str = 'Linf') -> str | None:
  """Why `eps` cannot be an L∞ radius on [0, 1] images (None if it can); warns when ε > 0.5.
  An L2 radius (`norm='L2'`) need only be finite and ≥ 0: ‖δ‖₂ may reach √D."""
  try:
    value = float(eps)
  except (TypeError, ValueError):
    return f'{field}={eps!r} is not a number.'
  if norm == 'L2':
    if not math.isfinite(value) or value < 0:
      return f'{field}={eps} must be a finite L2 radius ≥ 0 (e.g. 0.5 on CIFAR-10).'
    return None
  if not math.isfinite(value):
    return f'{field}={eps} is not finite: give the L∞ radius in [0, 1], e.g. 8/255.'
  if value > 1:
    return (f'{field}={eps} is outside [0, 1]: ε is in pixel units of [0, 1]; for {eps:g} '
            f'in 0–255 units write {eps:g}/255 = {value / 255:.4g}.')
  if value < 0:
    return f'{field}={eps} is negative: the L∞ radius must be in [0, 1].'
  if value > PIXEL_UNITS_WARNING:
    log.warning('%s=%g is more than %g of the [0, 1] pixel range: if it is in 0–255 units, '
                'write %g/255 = %.4g.', field, value, PIXEL_UNITS_WARNING, value, value / 255)
  return None


def check_eps(eps: float, norm: str = 'Linf') -> None:
  """Reject an unknown `norm` and a negative radius given as a Python number (checked
  before tracing), with `eps_problem`'s message."""
  check_norm(norm)
  if isinstance(eps, (int, float)) and eps < 0:
    raise ValueError(eps_problem(eps, norm=norm))


def init_perturbation(key, x: jax.Array, eps, init: str = 'zero', scale: float = 1.0,
                      norm: str = 'Linf') -> jax.Array:
  """Initial point η: 0; uniform in the scale·ε ball of `norm`, clipped to the box
  ('uniform': U(−scale·ε, scale·ε) per pixel in L∞; in L2 the radius scale·ε·u^{1/D},
  u ~ U(0, 1), times a direction t/‖t‖₂, t ~ N(0, I)); or scale·N(0, I), not clipped
  ('normal': TRADES and MART start from x + 0.001·N(0, I))."""
  if init == 'zero':
    return jnp.zeros_like(x)
  if init == 'uniform' and norm == 'L2':
    direction_key, radius_key = jax.random.split(key)
    dim = x[0].size
    radius = scale * eps * jax.random.uniform(radius_key, (len(x),), x.dtype) ** (1.0 / dim)
    direction = normalize_l2(jax.random.normal(direction_key, x.shape, x.dtype))
    eta = per_example(radius, x) * direction
    return clip_to_box(x, eta)
  if init == 'uniform':
    eta = jax.random.uniform(key, x.shape, x.dtype, -scale * eps, scale * eps)
    return clip_to_box(x, eta)
  if init == 'normal':
    return scale * jax.random.normal(key, x.shape, x.dtype)
  raise ValueError(f'Unknown perturbation init {init!r}; known: {ATTACK_STARTS}.')


def l2_step(x, delta, grad, *, eps, alpha) -> jax.Array:
  """δ ← box(Π_ε(δ + α·g/‖g‖₂)), the L2 projection `project_l2`."""
  return clip_to_box(x, project_l2(delta + alpha * normalize_l2(grad), eps))


def sign_step(x, delta, grad, *, eps, alpha, project: bool = True) -> jax.Array:
  """δ ← box(Π_ε(δ + α·sign g)); Π_ε only when `project`."""
  delta = delta + alpha * jnp.sign(grad)
  if project:
    delta = project_linf(delta, eps)
  return clip_to_box(x, delta)
