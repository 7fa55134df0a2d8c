"""DeepFool, multi-class, L2 and L∞ (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016,
"DeepFool: a simple and accurate method to fool deep neural networks", Algorithm 2
and its ℓp extension), batch-wise as `bethgelab/foolbox` 3's ``L2DeepFoolAttack`` /
``LinfDeepFoolAttack`` (logits loss, overshoot 0.02, 50 steps).

A minimum-norm attack: at each step the classifier is linearised around the
current point x_i and, with f_k = z_k − z_y and w_k = ∇f_k for k ≠ y,

    l = argmin_{k≠y} |f_k| / ‖w_k‖_q        (q = 2 for L2, q = 1 for L∞),
    r = (|f_l|/‖w_l‖₂ + 10⁻⁴)·w_l/‖w_l‖₂   (L2),   r = (|f_l|/‖w_l‖₁ + 10⁻⁴)·sign w_l   (L∞),

the step onto the nearest linearised boundary. The steps add up to r_tot and
x_{i+1} = clip(x + (1 + overshoot)·r_tot, 0, 1); an example stops once
misclassified. For an affine classifier one step lands (1 + overshoot) beyond the
exact minimal perturbation |f_l|/‖w_l‖_q. Differences from foolbox: all classes
are candidates (foolbox's default keeps the 10 most likely) and the reference
class is the label y (foolbox: the clean prediction; the same on correctly
classified points, and misclassified points are not moved by either).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import THREAT_MODELS, ApplyFn, per_example

DEEPFOOL_NORMS = tuple(m.lower() for m in THREAT_MODELS)   # foolbox's spelling: 'linf', 'l2'


class DeepFoolResult(NamedTuple):
  """δ (not bounded by any ε: DeepFool looks for the smallest perturbation), the state
  and the number of linearisation steps each example took."""
  delta: jax.Array
  state: object
  steps: jax.Array


def logits_and_jacobian(apply_fn: ApplyFn, params, state, x, *, train: bool):
  """Logits (N, C), new state and ∂z_c/∂x per example as (N, C, *x.shape[1:]):
  one forward and C backward passes."""
  def forward(xa):
    logits, new_state, _ = apply_fn(params, state, xa, train)
    return logits, new_state

  logits, vjp, new_state = jax.vjp(forward, x, has_aux=True)
  classes = logits.shape[-1]
  cotangents = jnp.broadcast_to(jnp.eye(classes, dtype=logits.dtype)[:, None, :],
                                (classes,) + logits.shape)
  jacobian = jax.vmap(lambda v: vjp(v)[0])(cotangents)
  return logits, new_state, jnp.moveaxis(jacobian, 0, 1)


@attack_convention(keyed=False)
def deepfool_attack(apply_fn: ApplyFn, params, state, x, y, *, norm: str = 'linf',
                    steps: int = 50, overshoot: float = 0.02,
                    train: bool = False) -> DeepFoolResult:
  """Multi-class DeepFool in the `norm` ('l2' or 'linf') from the clean point x."""
  if norm not in DEEPFOOL_NORMS:
    raise ValueError(f'Unknown DeepFool norm {norm!r}; known: {DEEPFOOL_NORMS}.')
  n = len(x)

  def step(carry):
    i, x_cur, r_total, st, taken, _ = carry
    logits, st, jac = logits_and_jacobian(apply_fn, params, st, x_cur, train=train)
    is_adv = logits.argmax(-1) != y
    true = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    f = logits - jnp.take_along_axis(logits, y[:, None], axis=-1)          # (N, C)
    w = jac - jnp.take_along_axis(jac, per_example(y, x)[:, None], axis=1)
    w = w.reshape(n, f.shape[1], -1)
    q_norm = (jnp.sqrt((w ** 2).sum(-1)) if norm == 'l2' else jnp.abs(w).sum(-1))
    distance = jnp.where(true, jnp.inf, jnp.abs(f) / (q_norm + 1e-8))
    best = distance.argmin(axis=1)
    d = jnp.take_along_axis(distance, best[:, None], axis=1)[:, 0] + 1e-4
    w_best = jnp.take_along_axis(w, best[:, None, None], axis=1)[:, 0].reshape(x.shape)
    if norm == 'l2':
      l2 = jnp.sqrt((w_best.reshape(n, -1) ** 2).sum(-1))
      r = per_example(d / (l2 + 1e-8), x) * w_best
    else:
      r = per_example(d, x) * jnp.sign(w_best)
    r_total = r_total + r
    moved = jnp.clip(x + (1.0 + overshoot) * r_total, 0.0, 1.0)
    x_cur = jnp.where(per_example(is_adv, x), x_cur, moved)
    return i + 1, x_cur, r_total, st, taken + (~is_adv).astype(jnp.int32), is_adv.all()

  def keep_going(carry):
    i, *_, done = carry
    return (i < steps) & ~done

  carry = (0, x, jnp.zeros_like(x), state, jnp.zeros((n,), jnp.int32), jnp.array(False))
  _, x_adv, _, state, taken, _ = jax.lax.while_loop(keep_going, step, carry)
  return DeepFoolResult(jax.lax.stop_gradient(x_adv - x), state, taken)
