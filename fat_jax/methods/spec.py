"""Training methods as data: `resolve_method(config.method, ε) -> Method` (SPEC §2).

A method is an initial point × one input-gradient step × a projection ×
regularisers × a weight perturbation:

| name        | init (scale) | α (×ε) | project | extra (on by default)            |
|-------------|--------------|--------|---------|----------------------------------|
| `fgsm`      | zero         | 1.0    | yes     |                                  |
| `fgsm_rs`   | uniform (1)  | 1.25   | yes     |                                  |
| `n_fgsm`    | uniform (2)  | 1.0    | no      |                                  |
| `gradalign` | zero         | 1.25   | yes     | GradAlign, λ = 0.02·10^(ε·255/8) |
| `lap`       | uniform (2)  | 1.0    | no      | LAP (needs `lap_beta`)           |
| `aaer`      | uniform (2)  | 1.0    | no      | AAER (needs `aaer_lambda1..3`)   |
| `fgsm_mep`  | prior        | 1.0    | yes     | FGSM-MEP loss                    |
| `fd`        | prior        | 1.0    | yes     | FGSM-MEP loss + L_stable (α3 200)|
| `induce_co` | prior        | 1.0    | yes     | L_co (needs `co_tact_file`)      |
| `pgd_at`    | uniform (1)  | 0.25   | yes     | `steps` = 10 PGD steps           |

Config fields left unset (None) take the method's default. The components
compose: setting `lap_beta`, `aaer_lambda*`, `gradalign_lambda`,
`stable_alpha3` or `co_tact_file` switches LAP, AAER, GradAlign, L_stable or
L_co on for any single-step method (e.g. N-FGSM + AAER + LAP, FGSM + L_stable).
A resolved `Method` is a frozen, hashable tree of specs: a static jit argument.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import math
import os

import numpy as np

from fat_jax.losses.feature_diff import STABLE_ALPHA3, top_channels
from fat_jax.losses.gradalign import gradalign_lambda

INITS = ('zero', 'uniform', 'prior')


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """The training attack, fully resolved."""
  eps: float
  alpha: float              # absolute step size
  init: str = 'zero'        # 'zero' | 'uniform' (U(±init_scale·ε)) | 'prior' (FGSM-MEP)
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
class MEPSpec:
  """FGSM-MEP (`jiaxiaojunQAQ/FGSM-PGI FGSM_MEP.py`): the per-example prior perturbation and
  momentum, reset every `reset_every` epochs; label smoothing and the logit-pairing weight."""
  label_smoothing: float = 0.6   # probability of the true class (the official `--factor`)
  lam: float = 10.0              # weight of MSE(f(x + δ), f(x + P))
  decay: float = 0.3             # momentum decay of the prior update
  reset_every: int = 40          # epochs


@dataclasses.dataclass(frozen=True)
class StableSpec:
  """L_stable (Eq. 8 of the feature-difference paper): α3 × the activation difference of
  `node` between the adversarial point and the attack's start point."""
  alpha3: float = STABLE_ALPHA3
  node: str = 'B'


@dataclasses.dataclass(frozen=True)
class COSpec:
  """L_co (Eq. 9): the classification loss with the channels C_p of `node` masked, minus
  L_stable on C_p. `channels`: the indices of C_p (the top `percent`% by T_act of
  `tact_file`) among `num_channels`."""
  channels: tuple[int, ...]
  num_channels: int
  node: str = 'B'
  alpha3: float = STABLE_ALPHA3
  saturation: float = 100.0   # 0: Eq. 9 as written (unbounded); see losses.feature_diff.co_loss
  percent: float = 10.0
  tact_file: str = ''

  def indicator(self) -> np.ndarray:
    """The 0/1 indicator (C,) of C_p."""
    out = np.zeros((self.num_channels,), np.float32)
    out[list(self.channels)] = 1.0
    return out


@dataclasses.dataclass(frozen=True)
class Method:
  """A resolved method (hashable: a static jit argument)."""
  name: str
  attack: AttackSpec
  lap: Optional[LAPSpec] = None
  aaer: Optional[AAERSpec] = None
  gradalign: Optional[GradAlignSpec] = None
  mep: Optional[MEPSpec] = None
  stable: Optional[StableSpec] = None
  co: Optional[COSpec] = None


UNIFORM2 = dict(init='uniform', init_scale=2.0, alpha=1.0, project=False, steps=1)
METHOD_DEFAULTS = {
    'fgsm': dict(init='zero', init_scale=1.0, alpha=1.0, project=True, steps=1),
    'fgsm_rs': dict(init='uniform', init_scale=1.0, alpha=1.25, project=True, steps=1),
    'n_fgsm': UNIFORM2,
    'gradalign': dict(init='zero', init_scale=1.0, alpha=1.25, project=True, steps=1),
    'lap': UNIFORM2,
    'aaer': UNIFORM2,
    'fgsm_mep': dict(init='prior', init_scale=1.0, alpha=1.0, project=True, steps=1),
    'fd': dict(init='prior', init_scale=1.0, alpha=1.0, project=True, steps=1),
    'induce_co': dict(init='prior', init_scale=1.0, alpha=1.0, project=True, steps=1),
    'pgd_at': dict(init='uniform', init_scale=1.0, alpha=0.25, project=True, steps=10),
}


def _resolve_attack(c, eps: float) -> AttackSpec:
  fields = dict(METHOD_DEFAULTS[c.name])
  for field in ('init', 'init_scale', 'alpha', 'project', 'steps'):
    if c.get(field) is not None:
      fields[field] = c[field]
  if fields['init'] not in INITS:
    raise ValueError(f"Unknown method.init {fields['init']!r}; known: {INITS}.")
  if c.attack_bn not in ('train', 'eval'):
    raise ValueError(f"method.attack_bn must be 'train' or 'eval', got {c.attack_bn!r}.")
  return AttackSpec(eps=float(eps), alpha=float(fields.pop('alpha')) * eps,
                    init_scale=float(fields.pop('init_scale')), steps=int(fields.pop('steps')),
                    train_bn=c.attack_bn == 'train', **fields)


def _resolve_components(c, attack: AttackSpec, eps: float) -> dict:
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
  if attack.init == 'prior':
    if c.mep_reset_every < 1:
      raise ValueError(f'method.mep_reset_every must be ≥ 1 epoch, got {c.mep_reset_every}.')
    components['mep'] = MEPSpec(float(c.mep_label_smoothing), float(c.mep_lambda),
                                float(c.mep_decay), int(c.mep_reset_every))
  if c.get('stable_alpha3') is not None or c.name == 'fd':
    alpha3 = c.get('stable_alpha3')
    components['stable'] = StableSpec(STABLE_ALPHA3 if alpha3 is None else float(alpha3),
                                      c.feature_node)
  if c.get('co_tact_file'):
    components['co'] = _resolve_co(c)
  elif c.name == 'induce_co':
    raise ValueError("method 'induce_co' needs method.co_tact_file, the T_act file of a "
                     'checkpoint (python launch.py --mode=analyze --workdir=RUN writes '
                     'RUN/tact.npz).')
  if 'stable' in components and 'co' in components:
    raise ValueError('L_stable (method.stable_alpha3) and L_co (method.co_tact_file) pull the '
                     'same activation differences in opposite directions; set only one.')
  return components


def _resolve_co(c) -> COSpec:
  """L_co's channels: the top `co_percent`% of `feature_node` by the T_act in `co_tact_file`."""
  path = c.co_tact_file
  if not os.path.isfile(path):
    raise FileNotFoundError(f'method.co_tact_file {path!r} does not exist; write it with '
                            'python launch.py --mode=analyze --workdir=RUN (RUN/tact.npz).')
  with np.load(path) as tact:
    if c.feature_node not in tact:
      raise ValueError(f'{path} has no T_act of node {c.feature_node!r} (has '
                       f'{sorted(tact.files)}); set method.feature_node.')
    saliency = np.asarray(tact[c.feature_node], np.float32)
  if saliency.ndim != 1 or not math.isfinite(float(saliency.sum())):
    raise ValueError(f'{path}: T_act of node {c.feature_node!r} must be a finite (C,) vector, '
                     f'got shape {saliency.shape}.')
  channels = np.flatnonzero(np.asarray(top_channels(saliency, float(c.co_percent))))
  if c.co_saturation < 0:
    raise ValueError(f'method.co_saturation must be ≥ 0 (0: Eq. 9 as written), got '
                     f'{c.co_saturation}.')
  return COSpec(tuple(int(k) for k in channels), len(saliency), c.feature_node,
                float(c.co_alpha3), float(c.co_saturation), float(c.co_percent), path)


def resolve_method(method_config, eps: float) -> Method:
  """The `Method` of `method_config` (unset fields take the method's defaults)."""
  name = method_config.name
  if name not in METHOD_DEFAULTS:
    raise ValueError(f'Unknown method {name!r}; known: {sorted(METHOD_DEFAULTS)}.')
  if eps < 0:
    raise ValueError(f'The training radius must be ≥ 0, got eps={eps}.')
  attack = _resolve_attack(method_config, eps)
  components = _resolve_components(method_config, attack, eps)
  if attack.steps > 1 and components:
    raise ValueError(f'{sorted(components)} need a single-step attack; got steps={attack.steps}.')
  return Method(name, attack, **components)
