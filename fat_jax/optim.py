"""The torch-exact SGD as an optax transformation, and the learning-rate schedules.

`torch_sgd` reproduces ``torch.optim.SGD(momentum=μ, weight_decay=wd)``:

    d = ∇w + wd·w            (coupled decay: added to the gradient)
    b ← μ·b + d              (no dampening; b₀ = 0, so b₁ = d₁ as torch's first step)
    w ← w − lr·b

with lr and μ read per step from a `Schedule` at the transformation's own
count, so that torch ``CyclicLR``'s momentum cycle is reproduced exactly. It is
an ordinary ``optax.GradientTransformation``: the train step, LAP's proxy step
and AWP only call ``tx.update``, so any optax optimiser (``optax.adamw``, a
chain with gradient clipping, ...) can take its place.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Hyper(NamedTuple):
  """Per-step optimiser hyper-parameters."""
  lr: jax.Array
  momentum: jax.Array


class TorchSGDState(NamedTuple):
  """`torch_sgd`'s state: the number of updates taken (the schedule's step) and the momentum
  buffers (torch's ``momentum_buffer``)."""
  count: jax.Array
  trace: Any


def init_torch_sgd(params) -> TorchSGDState:
  """Count 0 and zero buffers (torch's first step sets b = d, i.e. b₀ = 0)."""
  return TorchSGDState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))


def torch_sgd(schedule: 'Schedule', weight_decay: float) -> optax.GradientTransformation:
  """``torch.optim.SGD(momentum, weight_decay)`` stepped by `schedule` (lr and μ per update)."""
  def update(grads, state: TorchSGDState, params=None):
    if params is None:
      raise ValueError('torch_sgd couples the weight decay to the weights: call '
                       'tx.update(grads, state, params) with params.')
    hyper = schedule(state.count)
    trace = jax.tree.map(lambda b, g, w: hyper.momentum * b + g + weight_decay * w,
                         state.trace, grads, params)
    updates = jax.tree.map(lambda b: -hyper.lr * b, trace)
    return updates, TorchSGDState(state.count + 1, trace)

  return optax.GradientTransformation(init_torch_sgd, update)


_INJECTED = tuple(getattr(optax, name) for name in (
    'InjectHyperparamsState', 'InjectStatefulHyperparamsState') if hasattr(optax, name))


def logged_hyperparams(opt_state, schedule: 'Schedule', step) -> dict:
  """The learning rate and momentum of the update that produced `opt_state`, as the optimiser
  holds them: ``{'lr', 'momentum'}``, either key left out when unknown.

  An ``optax.inject_hyperparams`` state (alone or inside a chain; the first with a
  ``learning_rate``) gives its ``learning_rate`` and its ``momentum`` (SGD) or ``b1`` (Adam's
  first-moment decay, what torch's ``OneCycleLR`` cycles as the momentum of Adam). Else a
  `torch_sgd` state gives ``schedule(step)``, `schedule` being the one `torch_sgd` was built
  from. Any other optimiser carries neither: {}.
  """
  states = jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, _INJECTED + (
      TorchSGDState,)))
  for state in states:
    if isinstance(state, _INJECTED) and 'learning_rate' in state.hyperparams:
      h = state.hyperparams
      momentum = next((h[k] for k in ('momentum', 'b1') if h.get(k) is not None), None)
      return {'lr': h['learning_rate'], **({} if momentum is None else {'momentum': momentum})}
  if any(isinstance(state, TorchSGDState) for state in states):
    return schedule(step)._asdict()
  return {}


@dataclasses.dataclass(frozen=True)
class WeightAverage:
  """An exponential moving average of the weights (EMA), the rule of Gowal et al. (2020),
  "Uncovering the limits of adversarial training", as in the public reimplementation
  `imrahulr/adversarial_robustness_pytorch` ``gowal21uncovering/utils/watrain.py``
  ``ema_update(wa_model, model, global_step, decay_rate=τ, warmup_steps=W,
  dynamic_decay=True)``, called after each optimiser step t = 1, 2, ... (updates taken):

      d_t = 0                                 t < W   (a copy of the weights)
      d_t = min(τ, (1 + t − W)/(10 + t − W))  t ≥ W   (τ where 10 + t − W = 0)
      ŵ ← d_t·ŵ + (1 − d_t)·w

  with ŵ₀ = w₀ (the official ``copy.deepcopy`` of the model). It averages what torch's
  ``model.parameters()`` holds: the params, BatchNorm scale and bias included; the BatchNorm
  running statistics are the model's own (the official ``update_bn`` copies them into the
  averaged model before every evaluation). d_t is computed in float32 (the official: Python
  floats, rounded to float32 when it scales the tensors).
  """
  decay: float
  warmup_steps: float = 0.0

  def __post_init__(self):
    if not 0 <= self.decay < 1 or self.warmup_steps < 0:
      raise ValueError(f'WeightAverage needs 0 ≤ decay < 1 and warmup_steps ≥ 0, got '
                       f'{self.decay} and {self.warmup_steps}.')

  def init(self, params):
    """ŵ₀ = w₀, in buffers of its own."""
    return jax.tree.map(lambda w: jnp.array(w, copy=True), params)

  def decay_at(self, step) -> jax.Array:
    """d_t after the optimiser step `step` = t (1-based)."""
    delta = jnp.asarray(step, jnp.float32) - jnp.float32(self.warmup_steps)
    dynamic = jnp.where(10 + delta != 0, jnp.minimum(jnp.float32(self.decay),
                                                     (1 + delta) / (10 + delta)), self.decay)
    return jnp.where(delta >= 0, dynamic, 0.0).astype(jnp.float32)

  def update(self, average, params, step):
    """ŵ after the optimiser step `step` = t, given the weights w after it."""
    d = self.decay_at(step)
    return jax.tree.map(lambda a, w: a * d.astype(a.dtype) + w * (1 - d).astype(w.dtype),
                        average, params)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Learning rate and momentum as functions of the iteration (0-based).

  kind:
    'cyclic'    torch ``CyclicLR(base_lr=0, max_lr=lr_max, step_size_up=u·T,
                step_size_down=(1 − u)·T, cycle_momentum=True, base_momentum=0.8,
                max_momentum=0.9)`` stepped once per iteration, u = `cycle_up` (0.5:
                ``step_size_up=T/2``; AAER's ``SVHN/AAER.py``: 2/5): with x = t/T mod 1,
                scale = x/u for x ≤ u, else (x − 1)/(u − 1); lr = lr_max·scale (0 → lr_max
                → 0 over the T = total_steps iterations), momentum = momentum −
                (momentum − base_momentum)·scale (0.9 → 0.8 → 0.9); the first
                iteration runs with lr = 0.
    'piecewise' lr_max, ×0.1 after 50% and again after 75% of the epochs.
    'piecewise_linear'  GradAlign's own schedule (`tml-epfl/understanding-fast-adv-training`
                `utils.get_lr_schedule('cyclic')` with `train.py`'s call): lr =
                np.interp(t, [0, ⌊2E/5⌋, E], [0, lr_max, 0]) at the fractional epoch
                t = (step + 1)/steps_per_epoch (E epochs), i.e. interpolated per iteration,
                peak at 2/5 of training; momentum fixed at `momentum` (0.9).
    'multistep' lr_max × gamma^(number of `milestones` epochs passed).
    'constant'  lr_max.
  """
  kind: str
  lr_max: float
  total_steps: int
  steps_per_epoch: int
  momentum: float = 0.9
  base_momentum: float = 0.8
  milestones: tuple[int, ...] = ()
  gamma: float = 0.1
  cycle_up: float = 0.5

  def __post_init__(self):
    if self.kind not in SCHEDULES:
      raise ValueError(f'Unknown lr schedule {self.kind!r}; known: {sorted(SCHEDULES)}.')
    if not 0 < self.cycle_up < 1:
      raise ValueError(f'The cyclic schedule needs 0 < cycle_up < 1 (the fraction of the '
                       f'cycle going up), got {self.cycle_up}.')
    if self.kind != 'cyclic' and self.cycle_up != 0.5:
      raise ValueError(f'cycle_up={self.cycle_up} shapes the cyclic schedule only, not '
                       f'{self.kind!r}.')
    if self.total_steps <= 0 or self.steps_per_epoch <= 0:
      raise ValueError('A schedule needs total_steps > 0 and steps_per_epoch > 0, '
                       f'got {self.total_steps} and {self.steps_per_epoch}.')

  def __call__(self, step) -> Hyper:
    return SCHEDULES[self.kind](self, jnp.asarray(step, jnp.float32))


def _cyclic(s: Schedule, step):
  cycle = jnp.floor(1 + step / s.total_steps)
  x = 1 + step / s.total_steps - cycle
  up = s.cycle_up
  scale = jnp.where(x <= up, x / up, (x - 1) / (up - 1))
  lr = s.lr_max * scale
  momentum = s.momentum - (s.momentum - s.base_momentum) * scale
  return Hyper(lr, momentum)


def _constant_momentum(s: Schedule, lr):
  return Hyper(jnp.asarray(lr, jnp.float32), jnp.asarray(s.momentum, jnp.float32))


def _piecewise(s: Schedule, step):
  epoch = jnp.floor(step / s.steps_per_epoch)
  num_epochs = s.total_steps / s.steps_per_epoch
  factor = jnp.where(epoch >= 0.75 * num_epochs, 0.01,
                     jnp.where(epoch >= 0.5 * num_epochs, 0.1, 1.0))
  return _constant_momentum(s, s.lr_max * factor)


def _piecewise_linear(s: Schedule, step):
  num_epochs = s.total_steps // s.steps_per_epoch
  epoch = (step + 1) / s.steps_per_epoch
  lr = jnp.interp(epoch, jnp.array([0.0, num_epochs * 2 // 5, num_epochs], jnp.float32),
                  jnp.array([0.0, s.lr_max, 0.0], jnp.float32))
  return _constant_momentum(s, lr)


def _multistep(s: Schedule, step):
  epoch = jnp.floor(step / s.steps_per_epoch)
  passed = sum((epoch >= m).astype(jnp.float32) for m in s.milestones)
  return _constant_momentum(s, s.lr_max * s.gamma ** passed)


def _constant(s: Schedule, step):
  del step
  return _constant_momentum(s, s.lr_max)


SCHEDULES = {'cyclic': _cyclic, 'piecewise': _piecewise, 'piecewise_linear': _piecewise_linear,
             'multistep': _multistep, 'constant': _constant}
