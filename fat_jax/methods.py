"""Training methods: an initial point × an input-gradient attack × a projection
(× regularisers × weight perturbation, added by later methods) → one jitted
train step.

| name      | init (scale)   | α (×ε) | project | attack          |
|-----------|----------------|--------|---------|-----------------|
| `fgsm`    | zero           | 1.0    | yes     | 1 step          |
| `fgsm_rs` | uniform (1)    | 1.25   | yes     | 1 step          |
| `n_fgsm`  | uniform (2)    | 1.0    | no      | 1 step          |
| `pgd_at`  | uniform (1)    | 0.25   | yes     | `pgd_steps`     |

Config fields left unset (None) take the method's default from this table.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fat_jax import optim
from fat_jax.attacks import fgsm_attack, pgd_attack
from fat_jax.data import augment
from fat_jax.losses import accuracy, cross_entropy


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """The training attack of a method, fully resolved (hashable: a static jit argument)."""
  eps: float
  alpha: float              # absolute step size
  init: str = 'zero'
  init_scale: float = 1.0
  project: bool = True
  steps: int = 1            # 1 = FGSM family, > 1 = PGD
  train_bn: bool = True     # BatchNorm mode of the attack forwards (SPEC §1.5)

  def __call__(self, apply_fn, params, state, x, y, key):
    if self.steps == 1:
      return fgsm_attack(apply_fn, params, state, x, y, key, eps=self.eps, alpha=self.alpha,
                         init=self.init, init_scale=self.init_scale, project=self.project,
                         train=self.train_bn)
    return pgd_attack(apply_fn, params, state, x, y, key, eps=self.eps, alpha=self.alpha,
                      steps=self.steps, train=self.train_bn, freeze_misclassified=False,
                      init_scale=self.init_scale)


METHOD_DEFAULTS = {
    'fgsm': dict(init='zero', init_scale=1.0, alpha=1.0, project=True, steps=1),
    'fgsm_rs': dict(init='uniform', init_scale=1.0, alpha=1.25, project=True, steps=1),
    'n_fgsm': dict(init='uniform', init_scale=2.0, alpha=1.0, project=False, steps=1),
    'pgd_at': dict(init='uniform', init_scale=1.0, alpha=0.25, project=True, steps=10),
}


def resolve_attack(method_config, eps: float) -> AttackSpec:
  """The `AttackSpec` of `method_config` (its unset fields take the method's defaults)."""
  name = method_config.name
  if name not in METHOD_DEFAULTS:
    raise ValueError(f'Unknown method {name!r}; known: {sorted(METHOD_DEFAULTS)}.')
  if eps < 0:
    raise ValueError(f'The training radius must be ≥ 0, got eps={eps}.')
  fields = dict(METHOD_DEFAULTS[name])
  for field in ('init', 'init_scale', 'alpha', 'project', 'steps'):
    if method_config.get(field) is not None:
      fields[field] = method_config[field]
  if method_config.attack_bn not in ('train', 'eval'):
    raise ValueError(f"method.attack_bn must be 'train' or 'eval', got {method_config.attack_bn!r}.")
  return AttackSpec(eps=float(eps), alpha=float(fields.pop('alpha')) * eps,
                    init_scale=float(fields.pop('init_scale')), steps=int(fields.pop('steps')),
                    train_bn=method_config.attack_bn == 'train', **fields)


class TrainState(NamedTuple):
  """Everything a training step updates."""
  step: jax.Array
  params: Any
  batch_stats: Any
  momentum: Any


def init_train_state(model, key) -> TrainState:
  params, batch_stats = model.init(key)
  return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, optim.zero_buffers(params))


def make_train_step(model, attack: AttackSpec, schedule: optim.Schedule, *,
                    weight_decay: float, augment_mode: str, key):
  """``train_step(state, images_uint8, labels) -> (state, metrics)``, pure and jittable.

  batch → augment → attack (stop-gradient δ) → CE(f(x + δ), y) → ∇w → SGD.
  The step's randomness is ``fold_in(key, state.step)``.
  """
  def train_step(ts: TrainState, images, labels):
    step_key = jax.random.fold_in(key, ts.step)
    aug_key, attack_key = jax.random.split(step_key)
    x = augment(aug_key, images, mode=augment_mode)
    adv = attack(model.apply, ts.params, ts.batch_stats, x, labels, attack_key)

    def loss_fn(params):
      logits, batch_stats, _ = model.apply(params, adv.state, x + adv.delta, True)
      return cross_entropy(logits, labels).mean(), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts.params)
    hyper = schedule(ts.step)
    params, momentum = optim.sgd_update(ts.params, grads, ts.momentum, hyper, weight_decay)
    metrics = {'loss': loss, 'accuracy': accuracy(logits, labels).mean(),
               'lr': hyper.lr, 'momentum': hyper.momentum}
    return TrainState(ts.step + 1, params, batch_stats, momentum), metrics

  return train_step
