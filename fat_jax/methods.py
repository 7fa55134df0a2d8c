"""Training methods: an initial point × one input-gradient step × a projection
× regularisers × a weight perturbation → one jitted train step (SPEC §2).

| name        | init (scale) | α (×ε) | project | extra (on by default)            |
|-------------|--------------|--------|---------|----------------------------------|
| `fgsm`      | zero         | 1.0    | yes     |                                  |
| `fgsm_rs`   | uniform (1)  | 1.25   | yes     |                                  |
| `n_fgsm`    | uniform (2)  | 1.0    | no      |                                  |
| `gradalign` | zero         | 1.25   | yes     | GradAlign, λ = 0.02·10^(ε·255/8) |
| `lap`       | uniform (2)  | 1.0    | no      | LAP (needs `lap_beta`)           |
| `aaer`      | uniform (2)  | 1.0    | no      | AAER (needs `aaer_lambda1..3`)   |
| `pgd_at`    | uniform (1)  | 0.25   | yes     | `steps` = 10 PGD steps           |

Config fields left unset (None) take the method's default. The components
compose: setting `lap_beta`, `aaer_lambda*` or `gradalign_lambda` switches
LAP, AAER or GradAlign on for any single-step method (e.g. N-FGSM + AAER + LAP).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from fat_jax import optim
from fat_jax.attacks import init_perturbation, input_gradient, pgd_attack, sign_step
from fat_jax.data import augment
from fat_jax.losses import accuracy, cross_entropy
from fat_jax.losses.aaer import aaer_regularizer
from fat_jax.losses.gradalign import gradalign_lambda, gradalign_regularizer
from fat_jax.weight_perturbation import lap_perturb


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """The training attack, fully resolved."""
  eps: float
  alpha: float              # absolute step size
  init: str = 'zero'
  init_scale: float = 1.0
  project: bool = True
  steps: int = 1            # 1 = FGSM family, > 1 = PGD
  train_bn: bool = True     # BatchNorm mode of the attack forwards (SPEC §1.5)


@dataclasses.dataclass(frozen=True)
class LAPSpec:
  beta: float
  gamma: float = 0.3
  ascent: bool = False      # labelled AWP-style variant; the official code descends


@dataclasses.dataclass(frozen=True)
class AAERSpec:
  lambda1: float
  lambda2: float
  lambda3: float
  differentiable_loss_variation: bool = False


@dataclasses.dataclass(frozen=True)
class GradAlignSpec:
  lam: float


@dataclasses.dataclass(frozen=True)
class Method:
  """A resolved method (hashable: a static jit argument)."""
  name: str
  attack: AttackSpec
  lap: Optional[LAPSpec] = None
  aaer: Optional[AAERSpec] = None
  gradalign: Optional[GradAlignSpec] = None


UNIFORM2 = dict(init='uniform', init_scale=2.0, alpha=1.0, project=False, steps=1)
METHOD_DEFAULTS = {
    'fgsm': dict(init='zero', init_scale=1.0, alpha=1.0, project=True, steps=1),
    'fgsm_rs': dict(init='uniform', init_scale=1.0, alpha=1.25, project=True, steps=1),
    'n_fgsm': UNIFORM2,
    'gradalign': dict(init='zero', init_scale=1.0, alpha=1.25, project=True, steps=1),
    'lap': UNIFORM2,
    'aaer': UNIFORM2,
    'pgd_at': dict(init='uniform', init_scale=1.0, alpha=0.25, project=True, steps=10),
}


def _resolve_attack(c, eps: float) -> AttackSpec:
  fields = dict(METHOD_DEFAULTS[c.name])
  for field in ('init', 'init_scale', 'alpha', 'project', 'steps'):
    if c.get(field) is not None:
      fields[field] = c[field]
  if c.attack_bn not in ('train', 'eval'):
    raise ValueError(f"method.attack_bn must be 'train' or 'eval', got {c.attack_bn!r}.")
  return AttackSpec(eps=float(eps), alpha=float(fields.pop('alpha')) * eps,
                    init_scale=float(fields.pop('init_scale')), steps=int(fields.pop('steps')),
                    train_bn=c.attack_bn == 'train', **fields)


def _resolve_components(c, eps: float) -> dict:
  components = {}
  if c.get('lap_beta') is not None:
    components['lap'] = LAPSpec(float(c.lap_beta), float(c.lap_gamma), bool(c.lap_ascent))
  elif c.name == 'lap':
    raise ValueError("method 'lap' needs method.lap_beta (see configs/lap_eps*.py for the "
                     'published values).')
  lambdas = [c.get(f'aaer_lambda{i}') for i in (1, 2, 3)]
  if any(v is not None for v in lambdas):
    if any(v is None for v in lambdas):
      raise ValueError('AAER needs all of method.aaer_lambda1, aaer_lambda2, aaer_lambda3.')
    components['aaer'] = AAERSpec(*map(float, lambdas),
                                  bool(c.aaer_differentiable_loss_variation))
  elif c.name == 'aaer':
    raise ValueError("method 'aaer' needs method.aaer_lambda1..3 (see configs/aaer_*.py for "
                     'the published values).')
  if c.get('gradalign_lambda') is not None or c.name == 'gradalign':
    lam = c.get('gradalign_lambda')
    components['gradalign'] = GradAlignSpec(float(gradalign_lambda(eps) if lam is None else lam))
  return components


def resolve_method(method_config, eps: float) -> Method:
  """The `Method` of `method_config` (unset fields take the method's defaults)."""
  name = method_config.name
  if name not in METHOD_DEFAULTS:
    raise ValueError(f'Unknown method {name!r}; known: {sorted(METHOD_DEFAULTS)}.')
  if eps < 0:
    raise ValueError(f'The training radius must be ≥ 0, got eps={eps}.')
  attack = _resolve_attack(method_config, eps)
  components = _resolve_components(method_config, eps)
  if attack.steps > 1 and components:
    raise ValueError(f'{sorted(components)} need a single-step attack; got steps={attack.steps}.')
  return Method(name, attack, **components)


class TrainState(NamedTuple):
  """Everything a training step updates."""
  step: jax.Array
  params: Any
  batch_stats: Any
  momentum: Any


def init_train_state(model, key) -> TrainState:
  params, batch_stats = model.init(key)
  return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, optim.zero_buffers(params))


def _start_point(model, method: Method, params, state, x, y, eta):
  """Forward/backward at x + η: ∇_η ℓ (and ∇_w ℓ when LAP needs it), logits, new state."""
  def loss_at(params, eta):
    logits, new_state, _ = model.apply(params, state, x + eta, method.attack.train_bn)
    return cross_entropy(logits, y).mean(), (logits, new_state)

  if method.lap is None:
    g_eta, (logits, new_state) = jax.grad(loss_at, argnums=1, has_aux=True)(params, eta)
    return g_eta, None, logits, new_state
  (g_w, g_eta), (logits, new_state) = jax.grad(loss_at, argnums=(0, 1), has_aux=True)(params, eta)
  return g_eta, g_w, logits, new_state


def make_train_step(model, method: Method, schedule: optim.Schedule, *, weight_decay: float,
                    augment_mode: str, key):
  """``train_step(state, images_uint8, labels) -> (state, metrics)``, pure and jittable.

  batch → augment → start point η → ∇_η (one forward/backward; also ∇_w for
  LAP) → δ = box(Π_ε(η + α·sign ∇_η)) → [LAP: perturb w] → CE(f(x + δ)) [+ AAER]
  [+ GradAlign] → ∇_w → SGD. PGD-AT replaces the single step by `pgd_attack`.
  The step's randomness is ``fold_in(key, state.step)``.
  """
  attack = method.attack

  def train_step(ts: TrainState, images, labels):
    step_key = jax.random.fold_in(key, ts.step)
    aug_key, init_key, align_key = jax.random.split(step_key, 3)
    x = augment(aug_key, images, mode=augment_mode)
    hyper = schedule(ts.step)
    params, metrics = ts.params, {}
    if attack.steps > 1:
      adv = pgd_attack(model.apply, params, ts.batch_stats, x, labels, init_key, eps=attack.eps,
                       alpha=attack.alpha, steps=attack.steps, train=attack.train_bn,
                       freeze_misclassified=False, init_scale=attack.init_scale)
      delta, state, logits_start, g_eta = adv.delta, adv.state, None, None
    else:
      eta = init_perturbation(init_key, x, attack.eps, attack.init, attack.init_scale)
      g_eta, g_w, logits_start, state = _start_point(model, method, params, ts.batch_stats, x,
                                                     labels, eta)
      delta = sign_step(x, eta, g_eta, eps=attack.eps, alpha=attack.alpha,
                        project=attack.project)
      if method.lap is not None:
        params, metrics['lap_norm'] = lap_perturb(
            params, g_w, ts.momentum, hyper, weight_decay,
            paths=model.weight_layer_order(params), beta=method.lap.beta,
            gamma=method.lap.gamma, ascent=method.lap.ascent)

    if method.gradalign is not None and attack.init != 'zero':
      # GradAlign's first gradient is taken at x itself (free when the attack starts at 0).
      g = input_gradient(model.apply, params, state, x, labels, jnp.zeros_like(x), train=True)
      g_eta, state = g.grad, g.state

    def objective(params):
      logits, new_state, _ = model.apply(params, state, x + delta, True)
      ce = cross_entropy(logits, labels).mean()
      loss, aux = ce, {'ce': ce, 'accuracy': accuracy(logits, labels).mean()}
      if method.aaer is not None:
        reg, stats = aaer_regularizer(logits_start, logits, labels, **vars(method.aaer))
        loss += reg
        aux.update({f'aaer_{k}': v for k, v in stats._asdict().items()})
      if method.gradalign is not None:
        reg, (new_state, cos) = gradalign_regularizer(
            model.apply, params, new_state, x, labels, align_key, eps=attack.eps,
            grad_clean=g_eta, lam=method.gradalign.lam)
        loss += reg
        aux.update(gradalign_cos=cos, gradalign_reg=reg)
      return loss, (new_state, {**aux, 'loss': loss})

    grads, (batch_stats, aux) = jax.grad(objective, has_aux=True)(params)
    params, momentum = optim.sgd_update(params, grads, ts.momentum, hyper, weight_decay)
    metrics.update(aux, lr=hyper.lr, momentum=hyper.momentum)
    return TrainState(ts.step + 1, params, batch_stats, momentum), metrics

  return train_step
