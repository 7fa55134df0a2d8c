"""Training methods as values: `Method` and `resolve_method(config.method, ε) -> Method`.

A method is a training attack × exactly one objective × regularisers × an optional weight
perturbation (the values of `methods.training_attacks`, `methods.objectives`,
`methods.regularizers`, `methods.weight_perturbations`); the optax optimiser is given to
`make_train_step`. `resolve_method` is the one place where a config becomes these values:

| name        | init (scale)  | α (×ε) | Π_ε | steps | BN    | extra (on by default)            |
|-------------|---------------|--------|-----|-------|-------|----------------------------------|
| `fgsm`      | zero          | 1.0    | yes | 1     | train |                                  |
| `fgsm_rs`   | uniform (1)   | 1.25   | yes | 1     | train |                                  |
| `n_fgsm`    | uniform (2)   | 1.0    | no  | 1     | train |                                  |
| `gradalign` | zero          | 1.25   | yes | 1     | train | GradAlign, λ = 0.02·10^(ε·255/8) |
| `elle`      | zero          | 1.0    | yes | 1     | train | ELLE, λ of `losses.elle` (§)     |
| `elle_a`    | zero          | 1.0    | yes | 1     | train | ELLE-A, λ_max = 4000 (§)         |
| `lap`       | uniform (2)   | 1.0    | no  | 1     | train | LAP (needs `lap.beta`)           |
| `aaer`      | uniform (2)   | 1.0    | no  | 1     | train | AAER (needs `aaer.lambda1..3`)   |
| `fgsm_mep`  | prior         | 1.0    | yes | 1     | train | FGSM-MEP loss                    |
| `fd`        | prior         | 1.0    | yes | 1     | train | FGSM-MEP loss + L_stable (α3 200)|
| `induce_co` | prior         | 1.0    | yes | 1     | train | FGSM-MEP loss + L_co (tact file) |
| `zerograd`  | uniform (1)   | 2.0    | yes | 1     | train | ZeroGrad, q = 0.35               |
| `atas`      | previous      | 1.0    | yes | 1     | eval  | ATAS adaptive step               |
| `pgd_at`    | uniform (1)   | 0.25   | yes | 10    | train |                                  |
| `trades`    | normal (1e-3) | †      | yes | 10    | eval  | KL attack, TRADES loss, β = 6    |
| `mart`      | normal (1e-3) | †      | yes | 10    | eval  | MART loss, β = 5                 |
| `dart`      | uniform (1)   | 0.25   | yes | 10    | eval  | DART: stop at FOSC ≤ c_t (‡)     |
| `mma`       | uniform (1)   | 0.25   | yes | 10    | train | MMA loss (lecture form)          |

† 0.007·255/8: a step of 0.007 at ε = 8/255 (the official code: 0.007 at ε = 0.031).
‡ c_t = max(c_max − c_max·t/T', 0) at 0-based epoch t, `dart.c_max` = 0.5 and
`dart.control_epochs` T' = 100 (of 120 epochs) by default, the first step always taken, and
from epoch 1 on each example's CE weighted by its own CE at the DART point (`dart.weighting`
'ce'; 'none' turns it off) (`YisenWang/dynamic_adv_training`).
§ `LIONS-EPFL/ELLE` scripts/run_elle_cifar10.sh, run_elle-a_cifar10.sh: λ = 1000 up to ε = 8/255,
5000 to 20/255, 10000 above; ELLE-A decay 0.99, sensitivity k = 2 (parser.py).
Config fields left unset (None) take the method's default. Each component has its section
of `config.method` (`config.section`), and the components compose: setting `lap.beta`,
`aaer.lambda1..3`, `gradalign.lam`, `elle.lam`, `zerograd.q`, `stable.alpha3` or
`co.tact_file` switches LAP, AAER, GradAlign, ELLE (ELLE-A with `elle.adaptive`), ZeroGrad,
L_stable or L_co on (e.g. N-FGSM + AAER + LAP, FGSM + L_stable); `trades.beta` / `mart.beta`
choose the TRADES / MART objective and `awp.gamma` adds AWP (AT-AWP: `pgd_at` + AWP;
TRADES-AWP: `trades` + AWP). `alpha_warmup_epochs` W > 0 scales the step
(and Π_ε's radius) of a single-step attack from a zero/uniform/normal start by
min((epoch + i/steps)/W, 1) (AAER's ``SVHN/AAER.py``: W = 5). A combination that cannot work is
refused when the `Method` is built, with an error naming both parts (the list is
in docs/library.md); `unread_fields` names the fields set for a component the method does not
have (training refuses them). A `Method` is a frozen, hashable tree of values: a static
jit argument.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from fat_jax.losses.feature_diff import STABLE_ALPHA3, top_channels
from fat_jax.losses.elle import ELLE_A_LAMBDA_MAX, elle_lambda
from fat_jax.losses.gradalign import gradalign_lambda
from fat_jax.attacks.core import ATTACK_STARTS
from fat_jax.errors import command_name
from fat_jax.methods.objectives import MART, MMA, TRADES, CrossEntropy, MEPObjective
from fat_jax.methods.regularizers import AAER, ELLE, GradAlign, LCo, LStable
from fat_jax.methods.training_attacks import (AdaptiveAttack, DynamicAttack, FGSMAttack, KLAttack,
                                              PGDAttack, PriorAttack, ZeroGrad)
from fat_jax.methods.weight_perturbations import AWP, LAP
from fat_jax.validation import dotted_field

# The starts of a training attack: those of `fat_jax.attacks`, and the per-example state kept
# by FGSM-MEP ('prior') and ATAS ('previous').
STATEFUL_STARTS = ('prior', 'previous')
TRAINING_ATTACK_STARTS = ATTACK_STARTS + STATEFUL_STARTS
ATTACK_LOSSES = ('ce', 'kl')


def _name(value) -> str:
  return type(value).__name__


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method composed from values (hashable: a static jit argument).

  `robust_overfitting_forwards` replays the extra train-mode forward on the clean
  batch after the update of `locuslab/robust_overfitting` (and AT-AWP, built on
  it): its training-accuracy log, `clean_accuracy` (the restart-loss forward is
  `PGDAttack.restart_forward`). Impossible combinations raise ValueError here.
  """
  name: str
  attack: Any
  objective: Any = CrossEntropy()
  regularizers: tuple = ()
  weights: Any = None
  robust_overfitting_forwards: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'regularizers', tuple(self.regularizers))
    _check_composition(self)

  def _find(self, kind):
    return next((r for r in self.regularizers if isinstance(r, kind)), None)

  # Each component by role, None when the method has none.
  lap = property(lambda self: self.weights if isinstance(self.weights, LAP) else None)
  awp = property(lambda self: self.weights if isinstance(self.weights, AWP) else None)
  aaer = property(lambda self: self._find(AAER))
  elle = property(lambda self: self._find(ELLE))
  gradalign = property(lambda self: self._find(GradAlign))
  stable = property(lambda self: self._find(LStable))
  co = property(lambda self: self._find(LCo))
  mep = property(lambda self: self.objective if isinstance(self.objective, MEPObjective)
                 else None)
  trades = property(lambda self: self.objective if isinstance(self.objective, TRADES) else None)
  mma = property(lambda self: self.objective if isinstance(self.objective, MMA) else None)
  mart = property(lambda self: self.objective if isinstance(self.objective, MART) else None)
  zerograd = property(lambda self: getattr(self.attack, 'zerograd', None))
  atas = property(lambda self: self.attack if isinstance(self.attack, AdaptiveAttack) else None)


def _check_composition(m: Method) -> None:
  """Refuse the combinations that cannot work, naming both parts."""
  attack = m.attack
  kinds = [type(r) for r in m.regularizers]
  duplicated = sorted({k.__name__ for k in kinds if kinds.count(k) > 1})
  if duplicated:
    raise ValueError(f'Each regulariser at most once; {duplicated} appear more than once.')
  for part in (*m.regularizers, m.weights, m.objective):
    needs = getattr(part, 'needs_start', False) or getattr(part, 'pairs_with_start', False)
    if part is not None and needs and not attack.has_start:
      raise ValueError(
          f'{_name(part)} needs the start forward of a single-step attack; the training attack '
          f'{_name(attack)} (steps={attack.steps}, loss={attack.loss!r}) has none.')
  if m.co is not None and m.stable is not None:
    raise ValueError('L_stable (method.stable.alpha3) and L_co (method.co.tact_file) pull the '
                     'same activation differences in opposite directions; set only one.')
  if m.awp is not None and isinstance(m.objective, MEPObjective):
    raise ValueError('AWP composes with the CE, TRADES and MART objectives, not with the '
                     'FGSM-MEP objective.')
  if getattr(attack, 'weighting', 'none') != 'none' and not isinstance(m.objective, CrossEntropy):
    raise ValueError(f"DART's per-example loss weights (method.dart.weighting="
                     f"{attack.weighting!r}) weight the CE objective, not {_name(m.objective)}; "
                     "set method.dart.weighting='none' to train DART's points with it.")
  if m.robust_overfitting_forwards and not isinstance(attack, PGDAttack):
    raise ValueError('method.robust_overfitting_forwards replays the PGD-AT loop of '
                     f'locuslab/robust_overfitting: it needs a multi-step CE attack, not '
                     f'{_name(attack)}.')


UNIFORM2 = dict(init='uniform', init_scale=2.0, alpha=1.0, project=False, steps=1)
METHOD_DEFAULTS = {
    'fgsm': dict(init='zero', init_scale=1.0, alpha=1.0, project=True, steps=1),
    'fgsm_rs': dict(init='uniform', init_scale=1.0, alpha=1.25, project=True, steps=1),
    'n_fgsm': UNIFORM2,
    'gradalign': dict(init='zero', init_scale=1.0, alpha=1.25, project=True, steps=1),
    'elle': dict(init='zero', init_scale=1.0, alpha=1.0, project=True, steps=1),
    'elle_a': dict(init='zero', init_scale=1.0, alpha=1.0, project=True, steps=1),
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
    'dart': dict(init='uniform', init_scale=1.0, alpha=0.25, project=True, steps=10,
                 attack_bn='eval'),
    'mma': dict(init='uniform', init_scale=1.0, alpha=0.25, project=True, steps=10),
}


def _resolve_attack(c, eps: float):
  """The training attack of `c` (the method's defaults for unset fields)."""
  fields = {'attack_bn': 'train', 'attack_loss': 'ce', **METHOD_DEFAULTS[c.name]}
  for field in ('init', 'init_scale', 'alpha', 'project', 'steps', 'attack_bn', 'attack_loss'):
    if c.get(field) is not None:
      fields[field] = c[field]
  init, loss, steps = fields['init'], fields['attack_loss'], int(fields['steps'])
  if init not in TRAINING_ATTACK_STARTS:
    raise ValueError(f"Unknown method.init {init!r}; known: {TRAINING_ATTACK_STARTS}.")
  if fields['attack_bn'] not in ('train', 'eval'):
    raise ValueError(f"method.attack_bn must be 'train' or 'eval', got {fields['attack_bn']!r}.")
  if loss not in ATTACK_LOSSES:
    raise ValueError(f'Unknown method.attack_loss {loss!r}; known: {ATTACK_LOSSES}.')
  common = dict(eps=float(eps), alpha=float(fields['alpha']) * eps,
                train_bn=fields['attack_bn'] == 'train')
  start = dict(init=init, init_scale=float(fields['init_scale']))
  if init in STATEFUL_STARTS and (steps > 1 or loss != 'ce'):
    raise ValueError(f"method.init={init!r} ({'FGSM-MEP' if init == 'prior' else 'ATAS'}) is a "
                     f'single-step CE attack; got steps={steps}, attack_loss={loss!r}.')
  q = _default(c, c.zerograd.q, 'zerograd', ZeroGrad.q)
  if q is not None:
    if not 0 <= q < 1:
      raise ValueError(f'method.zerograd.q is a quantile in [0, 1), got {q}.')
    if init in STATEFUL_STARTS:
      raise ValueError('ZeroGrad masks the gradient of the FGSM step from η; FGSM-MEP and ATAS '
                       'take their own steps.')
    if steps > 1 or loss != 'ce':
      raise ValueError(f'ZeroGrad (method.zerograd.q) needs a single-step CE attack; got '
                       f'steps={steps}, attack_loss={loss!r}.')
  if c.name == 'dart':
    return _resolve_dart(c, common, start, steps, loss)
  if init == 'prior':
    mep = c.mep
    if mep.reset_every < 1:
      raise ValueError(f'method.mep.reset_every must be ≥ 1 epoch, got {mep.reset_every}.')
    return PriorAttack(**common, label_smoothing=float(mep.label_smoothing),
                       decay=float(mep.decay), reset_every=int(mep.reset_every))
  if init == 'previous':
    atas = c.atas
    if atas.reset_every < 1 or atas.warmup_epochs < 0:
      raise ValueError('ATAS needs method.atas.reset_every ≥ 1 and atas.warmup_epochs ≥ 0, got '
                       f'{atas.reset_every} and {atas.warmup_epochs}.')
    if not 0 < atas.min_step <= atas.max_step:
      raise ValueError('ATAS needs 0 < method.atas.min_step ≤ atas.max_step (× ε), got '
                       f'{atas.min_step} and {atas.max_step}.')
    return AdaptiveAttack(
        **common, min_step=float(atas.min_step) * eps, max_step=float(atas.max_step) * eps,
        scale=float(atas.step_scale) * eps, c=float(atas.c), beta=float(atas.beta),
        warmup_epochs=int(atas.warmup_epochs), reset_every=int(atas.reset_every))
  if loss == 'kl':
    return KLAttack(**common, **start, steps=steps)
  if steps > 1:
    return PGDAttack(**common, **start, steps=steps,
                     restart_forward=bool(c.robust_overfitting_forwards))
  warmup = float(c.get('alpha_warmup_epochs') or 0.0)
  if warmup < 0:
    raise ValueError(f'method.alpha_warmup_epochs must be ≥ 0 (0: off), got {warmup}.')
  return FGSMAttack(**common, **start, project=bool(fields['project']),
                    zerograd=None if q is None else ZeroGrad(float(q)), warmup_epochs=warmup)


def _resolve_dart(c, common: dict, start: dict, steps: int, loss: str) -> DynamicAttack:
  """DART's PGD with the FOSC stopping rule (`methods.training_attacks.DynamicAttack`)."""
  if loss != 'ce' or start['init'] not in ATTACK_STARTS:
    raise ValueError(f"method 'dart' is PGD on the CE from a zero/uniform/normal start; got "
                     f"attack_loss={loss!r}, init={start['init']!r}.")
  dart = c.dart
  if dart.c_max < 0 or dart.control_epochs <= 0:
    raise ValueError('DART needs method.dart.c_max ≥ 0 and method.dart.control_epochs > 0 '
                     f'(the official 0.5 and 100), got {dart.c_max} and {dart.control_epochs}.')
  return DynamicAttack(**common, **start, steps=steps, c_max=float(dart.c_max),
                       control_epochs=float(dart.control_epochs), weighting=dart.weighting)


def _default(c, switch, name: str, value):
  """The component's `switch` if set, else `value` when the method is `name`, else None
  (component off)."""
  if switch is not None:
    return switch
  return value if c.name == name else None


def _resolve_objective(c, attack):
  """Exactly one objective: TRADES or MART when their β is set, MMA for the method 'mma',
  FGSM-MEP's with its prior attack, else CE."""
  chosen = {}
  beta = _default(c, c.trades.beta, 'trades', TRADES.beta)
  if beta is not None:
    chosen['TRADES (method.trades.beta)'] = TRADES(float(beta))
  beta = _default(c, c.mart.beta, 'mart', MART.beta)
  if beta is not None:
    chosen['MART (method.mart.beta)'] = MART(float(beta))
  if c.name == 'mma':
    chosen["MMA (method.name='mma')"] = MMA()
  if isinstance(attack, PriorAttack):
    chosen["FGSM-MEP's (method.init='prior')"] = MEPObjective(float(c.mep.label_smoothing),
                                                             float(c.mep.lam))
  if len(chosen) > 1:
    raise ValueError(f'Choose one training objective, got {sorted(chosen)}.')
  return next(iter(chosen.values()), CrossEntropy())


def _resolve_regularizers(c, eps: float) -> tuple:
  """AAER, GradAlign, ELLE, L_stable, L_co (in this order: the order their terms are added)."""
  terms = []
  aaer = c.aaer
  lambdas = [aaer.lambda1, aaer.lambda2, aaer.lambda3]
  if any(v is not None for v in lambdas):
    if any(v is None for v in lambdas):
      raise ValueError('AAER needs all of method.aaer.lambda1, lambda2, lambda3.')
    terms.append(AAER(*map(float, lambdas), bool(aaer.differentiable_loss_variation)))
  elif c.name == 'aaer':
    raise ValueError("method 'aaer' needs method.aaer.lambda1..3 (see configs/aaer_*.py for "
                     'the published values).')
  if c.gradalign.lam is not None or c.name == 'gradalign':
    lam = c.gradalign.lam
    terms.append(GradAlign(float(gradalign_lambda(eps) if lam is None else lam)))
  if c.elle.lam is not None or c.name in ('elle', 'elle_a'):
    terms.append(_resolve_elle(c.elle, c.name, eps))
  if c.stable.alpha3 is not None or c.name == 'fd':
    alpha3 = c.stable.alpha3
    terms.append(LStable(STABLE_ALPHA3 if alpha3 is None else float(alpha3), c.stable.node))
  if c.co.tact_file:
    terms.append(_resolve_co(c.co))
  elif c.name == 'induce_co':
    raise ValueError("method 'induce_co' needs method.co.tact_file, the T_act file of a "
                     f'checkpoint ({command_name()} --mode=analyze --workdir=RUN writes '
                     'RUN/tact.npz).')
  return tuple(terms)


def _resolve_elle(elle, name: str, eps: float) -> ELLE:
  """ELLE, or ELLE-A when `elle.adaptive` (default: for the method 'elle_a'), with the official
  λ (`losses.elle`) unless `elle.lam` is set."""
  adaptive = name == 'elle_a' if elle.adaptive is None else bool(elle.adaptive)
  lam = elle.lam
  lam = (ELLE_A_LAMBDA_MAX if adaptive else elle_lambda(eps)) if lam is None else float(lam)
  if lam < 0 or not 0 <= elle.decay <= 1 or elle.sensitivity < 0:
    raise ValueError('ELLE needs method.elle.lam ≥ 0, 0 ≤ elle.decay ≤ 1 and '
                     f'elle.sensitivity ≥ 0, got {lam}, {elle.decay} and {elle.sensitivity}.')
  return ELLE(lam, adaptive, float(elle.decay), float(elle.sensitivity),
              bool(elle.clean_forward))


def _resolve_weights(c):
  """LAP or AWP (one weight perturbation) or None."""
  lap, awp = c.lap, c.awp
  if lap.beta is not None and awp.gamma is not None:
    raise ValueError('Choose one weight perturbation: LAP (method.lap.beta) or AWP '
                     '(method.awp.gamma), not both.')
  if lap.beta is not None:
    return LAP(float(lap.beta), float(lap.gamma), bool(lap.ascent))
  if c.name == 'lap':
    raise ValueError("method 'lap' needs method.lap.beta (see configs/lap_eps*.py for the "
                     'published values).')
  if awp.gamma is not None:
    if awp.gamma <= 0 or awp.warmup_epochs < 0:
      raise ValueError('AWP needs method.awp.gamma > 0 and method.awp.warmup_epochs ≥ 0, got '
                       f'{awp.gamma} and {awp.warmup_epochs}.')
    return AWP(float(awp.gamma), int(awp.warmup_epochs))
  return None


def _resolve_co(co) -> LCo:
  """L_co's channels: the top `co.percent`% of `co.node` by the T_act in `co.tact_file`."""
  path, node = co.tact_file, co.node
  if not os.path.isfile(path):
    raise FileNotFoundError(f'method.co.tact_file {path!r} does not exist; write it with '
                            f'{command_name()} --mode=analyze --workdir=RUN (RUN/tact.npz).')
  with np.load(path) as tact:
    if node not in tact:
      raise ValueError(f'{path} has no T_act of node {node!r} (has {sorted(tact.files)}); set '
                       'method.co.node.')
    saliency = np.asarray(tact[node], np.float32)
  if saliency.ndim != 1 or not math.isfinite(float(saliency.sum())):
    raise ValueError(f'{path}: T_act of node {node!r} must be a finite (C,) vector, '
                     f'got shape {saliency.shape}.')
  channels = np.flatnonzero(np.asarray(top_channels(saliency, float(co.percent))))
  if co.saturation < 0:
    raise ValueError(f'method.co.saturation must be ≥ 0 (0: Eq. 9 as written), got '
                     f'{co.saturation}.')
  return LCo(tuple(int(k) for k in channels), len(saliency), node, float(co.alpha3),
             float(co.saturation), float(co.percent), path)


# The method fields that one component alone reads, and whether a `Method` has it: a field
# changed from its default while its component is off would do nothing (`unread_fields`). A
# component's section is read whole, its switch excepted (the switch being unset is what
# leaves it off).
READERS = (
    (('lap.gamma', 'lap.ascent'), 'LAP (method.lap.beta)', lambda m: m.lap is not None),
    (('aaer.differentiable_loss_variation',), 'AAER (method.aaer.lambda1..3)',
     lambda m: m.aaer is not None),
    (('elle.adaptive', 'elle.decay', 'elle.sensitivity', 'elle.clean_forward'),
     'ELLE (method.elle.lam)', lambda m: m.elle is not None),
    (('mep.label_smoothing', 'mep.lam', 'mep.decay', 'mep.reset_every'),
     "FGSM-MEP (method.init='prior')", lambda m: isinstance(m.attack, PriorAttack)),
    (('atas.c', 'atas.beta', 'atas.step_scale', 'atas.min_step', 'atas.max_step',
      'atas.warmup_epochs', 'atas.reset_every'), "ATAS (method.init='previous')",
     lambda m: m.atas is not None),
    (('dart.c_max', 'dart.control_epochs', 'dart.weighting'), "DART (method.name='dart')",
     lambda m: isinstance(m.attack, DynamicAttack)),
    (('awp.warmup_epochs',), 'AWP (method.awp.gamma)', lambda m: m.awp is not None),
    (('stable.node',), 'L_stable (method.stable.alpha3)', lambda m: m.stable is not None),
    (('co.node', 'co.percent', 'co.alpha3', 'co.saturation'), 'L_co (method.co.tact_file)',
     lambda m: m.co is not None),
    (('project', 'alpha_warmup_epochs'), 'a single-step attack from a zero/uniform/normal start',
     lambda m: isinstance(m.attack, FGSMAttack)),
    (('init_scale',), 'a zero/uniform/normal start (FGSM-MEP and ATAS keep their own)',
     lambda m: not isinstance(m.attack, (PriorAttack, AdaptiveAttack))),
)


def unread_fields(method_config, method: Method, defaults) -> list[str]:
  """One line per field of `method_config` that differs from `defaults` (the default config's
  method section) although no component of `method` reads it."""
  return [f'method.{field}={dotted_field(method_config, field)!r} does nothing without {reader}.'
          for fields, reader, has in READERS if not has(method) for field in fields
          if dotted_field(method_config, field) != dotted_field(defaults, field)]


def resolve_method(method_config, eps: float) -> Method:
  """The `Method` of `method_config` (unset fields take the method's defaults)."""
  name = method_config.name
  if name not in METHOD_DEFAULTS:
    raise ValueError(f'Unknown method {name!r}; known: {sorted(METHOD_DEFAULTS)}.')
  if eps < 0:
    raise ValueError(f'The training radius must be ≥ 0, got eps={eps}.')
  attack = _resolve_attack(method_config, eps)
  regularizers = _resolve_regularizers(method_config, eps)
  objective = _resolve_objective(method_config, attack)
  return Method(name, attack, objective, regularizers, _resolve_weights(method_config),
                bool(method_config.robust_overfitting_forwards))
