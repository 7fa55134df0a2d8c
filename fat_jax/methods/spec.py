"""Training methods as data: `resolve_method(config.method, ε) -> Method` (SPEC §2).

A method is an initial point × an input-gradient attack × a projection ×
regularisers × a weight perturbation, and a training objective:

| name        | init (scale)  | α (×ε) | Π_ε | steps | BN    | extra (on by default)            |
|-------------|---------------|--------|-----|-------|-------|----------------------------------|
| `fgsm`      | zero          | 1.0    | yes | 1     | train |                                  |
| `fgsm_rs`   | uniform (1)   | 1.25   | yes | 1     | train |                                  |
| `n_fgsm`    | uniform (2)   | 1.0    | no  | 1     | train |                                  |
| `gradalign` | zero          | 1.25   | yes | 1     | train | GradAlign, λ = 0.02·10^(ε·255/8) |
| `lap`       | uniform (2)   | 1.0    | no  | 1     | train | LAP (needs `lap_beta`)           |
| `aaer`      | uniform (2)   | 1.0    | no  | 1     | train | AAER (needs `aaer_lambda1..3`)   |
| `fgsm_mep`  | prior         | 1.0    | yes | 1     | train | FGSM-MEP loss                    |
| `fd`        | prior         | 1.0    | yes | 1     | train | FGSM-MEP loss + L_stable (α3 200)|
| `induce_co` | prior         | 1.0    | yes | 1     | train | FGSM-MEP loss + L_co (tact file) |
| `zerograd`  | uniform (1)   | 2.0    | yes | 1     | train | ZeroGrad, q = 0.35               |
| `atas`      | previous      | 1.0    | yes | 1     | eval  | ATAS adaptive step               |
| `pgd_at`    | uniform (1)   | 0.25   | yes | 10    | train |                                  |
| `trades`    | normal (1e-3) | †      | yes | 10    | eval  | KL attack, TRADES loss, β = 6    |
| `mart`      | normal (1e-3) | †      | yes | 10    | eval  | MART loss, β = 5                 |

† 0.007·255/8: a step of 0.007 at ε = 8/255 (the official code: 0.007 at ε = 0.031).
Config fields left unset (None) take the method's default. The components
compose: setting `lap_beta`, `aaer_lambda*`, `gradalign_lambda`, `zerograd_q`,
`stable_alpha3` or `co_tact_file` switches LAP, AAER, GradAlign, ZeroGrad,
L_stable or L_co on for any single-step method (e.g. N-FGSM + AAER + LAP,
FGSM + L_stable); `trades_beta` / `mart_beta` choose the TRADES / MART objective
and `awp_gamma` adds AWP to any method (AT-AWP: `pgd_at` + AWP; TRADES-AWP:
`trades` + AWP). A resolved `Method` is a frozen, hashable tree of specs: a
static jit argument.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import math
import os

import numpy as np

from fat_jax.losses.feature_diff import STABLE_ALPHA3, top_channels
from fat_jax.losses.gradalign import gradalign_lambda

INITS = ('zero', 'uniform', 'normal', 'prior', 'previous')
ATTACK_LOSSES = ('ce', 'kl')
# Components that need the single-step CE attack (its start point) and those that pick the
# training objective.
SINGLE_STEP_COMPONENTS = ('lap', 'aaer', 'gradalign', 'mep', 'zerograd', 'atas', 'stable', 'co')
OBJECTIVES = ('mep', 'trades', 'mart')


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """The training attack, fully resolved."""
  eps: float
  alpha: float              # absolute step size
  init: str = 'zero'        # 'zero' | 'uniform' (U(±init_scale·ε)) | 'normal' (init_scale·N(0, I))
  init_scale: float = 1.0   # | 'prior' (FGSM-MEP) | 'previous' (ATAS)
  project: bool = True
  steps: int = 1            # 1 = FGSM family, > 1 = PGD
  train_bn: bool = True     # BatchNorm mode of the attack forwards (SPEC §1.5)
  loss: str = 'ce'          # 'ce' | 'kl' (TRADES: KL(p(x) ‖ p(x + δ)))


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
class TRADESSpec:
  """TRADES (`yaodongyu/TRADES`): CE(f(x)) + β·KL(p(x) ‖ p(x + δ))."""
  beta: float = 6.0


@dataclasses.dataclass(frozen=True)
class MARTSpec:
  """MART (`YisenWang/MART`): BCE(f(x + δ)) + β·KL(p(x) ‖ p(x + δ))·(1 − p_y(x))."""
  beta: float = 5.0


@dataclasses.dataclass(frozen=True)
class AWPSpec:
  """AWP (`csdongxian/AWP`): v_l = γ·‖w_l‖·∇_l/‖∇_l‖ on every kernel, added for the step and
  removed after it; off during the first `warmup_epochs` epochs."""
  gamma: float
  warmup_epochs: int = 0


@dataclasses.dataclass(frozen=True)
class ZeroGradSpec:
  """ZeroGrad (`rohban-lab/catastrophic_overfitting`): zero the input-gradient coordinates
  below the per-example q-quantile of |∇| before the step."""
  q: float = 0.35


@dataclasses.dataclass(frozen=True)
class ATASSpec:
  """ATAS (`HuangZhiChao95/ATAS`): per-example step clip(scale/(1 + √v/c), min, max) from the
  stored previous perturbation (absolute step sizes), after `warmup_epochs` epochs of the
  constant step `AttackSpec.alpha`; the stored perturbation is re-drawn every `reset_every`
  epochs."""
  min_step: float
  max_step: float
  scale: float
  c: float = 0.01
  beta: float = 0.5
  warmup_epochs: int = 5
  reset_every: int = 10


@dataclasses.dataclass(frozen=True)
class StableSpec:
  """L_stable (Eq. 8 of the feature-difference paper): α3 × the activation difference of
  `node` between the adversarial point and the attack's start point."""
  alpha3: float = STABLE_ALPHA3
  node: str = 'B'


@dataclasses.dataclass(frozen=True)
class COSpec:
  """L_co (Eq. 9), added to the method's own training loss: the classification loss with the
  channels C_p of `node` masked, minus L_stable on C_p. `channels`: the indices of C_p (the top `percent`% by T_act of
  `tact_file`) among `num_channels`."""
  channels: tuple[int, ...]
  num_channels: int
  node: str = 'B'
  alpha3: float = STABLE_ALPHA3
  saturation: float = 0.0     # 0: Eq. 9 as written; a > 0: bounded (losses.feature_diff.co_loss)
  percent: float = 10.0
  tact_file: str = ''

  def indicator(self) -> np.ndarray:
    """The 0/1 indicator (C,) of C_p."""
    out = np.zeros((self.num_channels,), np.float32)
    out[list(self.channels)] = 1.0
    return out


@dataclasses.dataclass(frozen=True)
class Method:
  """A resolved method (hashable: a static jit argument).

  `robust_overfitting_forwards` replays the two extra train-mode forwards of
  `locuslab/robust_overfitting` (and of AT-AWP, built on it) that update the
  BatchNorm running statistics: one at x + δ after the attack (``attack_pgd``
  computes the restart loss even for one restart) and one on the clean batch
  after the update (its training-accuracy log, `train_clean_accuracy`).
  """
  name: str
  attack: AttackSpec
  lap: Optional[LAPSpec] = None
  aaer: Optional[AAERSpec] = None
  gradalign: Optional[GradAlignSpec] = None
  mep: Optional[MEPSpec] = None
  trades: Optional[TRADESSpec] = None
  mart: Optional[MARTSpec] = None
  awp: Optional[AWPSpec] = None
  zerograd: Optional[ZeroGradSpec] = None
  atas: Optional[ATASSpec] = None
  robust_overfitting_forwards: bool = False
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
    'zerograd': dict(init='uniform', init_scale=1.0, alpha=2.0, project=True, steps=1),
    'atas': dict(init='previous', init_scale=1.0, alpha=1.0, project=True, steps=1,
                 attack_bn='eval'),
    'fd': dict(init='prior', init_scale=1.0, alpha=1.0, project=True, steps=1),
    'induce_co': dict(init='prior', init_scale=1.0, alpha=1.0, project=True, steps=1),
    'pgd_at': dict(init='uniform', init_scale=1.0, alpha=0.25, project=True, steps=10),
    'trades': dict(init='normal', init_scale=0.001, alpha=0.007 * 255 / 8, project=True,
                   steps=10, attack_bn='eval', attack_loss='kl'),
    'mart': dict(init='normal', init_scale=0.001, alpha=0.007 * 255 / 8, project=True,
                 steps=10, attack_bn='eval'),
}


def _resolve_attack(c, eps: float) -> AttackSpec:
  fields = {'attack_bn': 'train', 'attack_loss': 'ce', **METHOD_DEFAULTS[c.name]}
  for field in ('init', 'init_scale', 'alpha', 'project', 'steps', 'attack_bn', 'attack_loss'):
    if c.get(field) is not None:
      fields[field] = c[field]
  if fields['init'] not in INITS:
    raise ValueError(f"Unknown method.init {fields['init']!r}; known: {INITS}.")
  if fields['attack_bn'] not in ('train', 'eval'):
    raise ValueError(f"method.attack_bn must be 'train' or 'eval', got {fields['attack_bn']!r}.")
  if fields['attack_loss'] not in ATTACK_LOSSES:
    raise ValueError(f"Unknown method.attack_loss {fields['attack_loss']!r}; known: "
                     f'{ATTACK_LOSSES}.')
  return AttackSpec(eps=float(eps), alpha=float(fields.pop('alpha')) * eps,
                    init_scale=float(fields.pop('init_scale')), steps=int(fields.pop('steps')),
                    train_bn=fields.pop('attack_bn') == 'train', loss=fields.pop('attack_loss'),
                    **fields)


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
  components.update(_resolve_baselines(c, attack, eps))
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


def _default(c, field: str, name: str, value):
  """`c.field` if set, else `value` when the method is `name`, else None (component off)."""
  if c.get(field) is not None:
    return c[field]
  return value if c.name == name else None


def _resolve_baselines(c, attack: AttackSpec, eps: float) -> dict:
  """TRADES, MART, AWP, ZeroGrad and ATAS."""
  components = {}
  beta = _default(c, 'trades_beta', 'trades', TRADESSpec.beta)
  if beta is not None:
    components['trades'] = TRADESSpec(float(beta))
  beta = _default(c, 'mart_beta', 'mart', MARTSpec.beta)
  if beta is not None:
    components['mart'] = MARTSpec(float(beta))
  if c.get('awp_gamma') is not None:
    if c.awp_gamma <= 0 or c.awp_warmup_epochs < 0:
      raise ValueError('AWP needs method.awp_gamma > 0 and method.awp_warmup_epochs ≥ 0, got '
                       f'{c.awp_gamma} and {c.awp_warmup_epochs}.')
    components['awp'] = AWPSpec(float(c.awp_gamma), int(c.awp_warmup_epochs))
  q = _default(c, 'zerograd_q', 'zerograd', ZeroGradSpec.q)
  if q is not None:
    if not 0 <= q < 1:
      raise ValueError(f'method.zerograd_q is a quantile in [0, 1), got {q}.')
    components['zerograd'] = ZeroGradSpec(float(q))
  if attack.init == 'previous':
    if c.atas_reset_every < 1 or c.atas_warmup_epochs < 0:
      raise ValueError('ATAS needs method.atas_reset_every ≥ 1 and atas_warmup_epochs ≥ 0, got '
                       f'{c.atas_reset_every} and {c.atas_warmup_epochs}.')
    if not 0 < c.atas_min_step <= c.atas_max_step:
      raise ValueError('ATAS needs 0 < method.atas_min_step ≤ atas_max_step (× ε), got '
                       f'{c.atas_min_step} and {c.atas_max_step}.')
    components['atas'] = ATASSpec(
        min_step=float(c.atas_min_step) * eps, max_step=float(c.atas_max_step) * eps,
        scale=float(c.atas_step_scale) * eps, c=float(c.atas_c), beta=float(c.atas_beta),
        warmup_epochs=int(c.atas_warmup_epochs), reset_every=int(c.atas_reset_every))
  return components


def _check_compatible(attack: AttackSpec, components: dict, extra_forwards: bool) -> None:
  single_step = sorted(k for k in SINGLE_STEP_COMPONENTS if k in components)
  if single_step and (attack.steps > 1 or attack.loss != 'ce'):
    raise ValueError(f'{single_step} need a single-step CE attack; got steps={attack.steps}, '
                     f'attack_loss={attack.loss!r}.')
  objectives = sorted(k for k in OBJECTIVES if k in components)
  if len(objectives) > 1:
    raise ValueError(f'Choose one training objective, got {objectives}.')
  if 'zerograd' in components and ('mep' in components or 'atas' in components):
    raise ValueError('ZeroGrad masks the gradient of the FGSM step from η; FGSM-MEP and ATAS '
                     'take their own steps.')
  if 'awp' in components and ('lap' in components or 'mep' in components):
    raise ValueError('AWP composes with the CE, TRADES and MART objectives, not with LAP or '
                     'FGSM-MEP.')
  if extra_forwards and (attack.steps == 1 or attack.loss != 'ce'):
    raise ValueError('method.robust_overfitting_forwards replays the PGD-AT loop of '
                     'locuslab/robust_overfitting: it needs a multi-step CE attack.')


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
  extra_forwards = bool(method_config.robust_overfitting_forwards)
  _check_compatible(attack, components, extra_forwards)
  return Method(name, attack, **components, robust_overfitting_forwards=extra_forwards)
