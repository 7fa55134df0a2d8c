"""The catastrophic-overfitting guard as values: which signals it measures (`methods.signals`),
its `Detector` and its policy, `Off`, `Adaptive` or `Rollback`, held by a `Guard`;
`resolve_guard(config.guard, method)` builds it and refuses a guard that cannot apply to the
method, naming both parts. The loop runs it (`fat_jax.run.co_guard`).

* `Detector`: a signal triggers when it leaves its running mean by more than k standard
  deviations of the earlier values in its direction (ELLE-A's rule, `LIONS-EPFL/ELLE`
  `Trainer.train`: error > mean + k·std of `elle_values` once more than 2 are known), over
  all earlier values or the last `window`.
* `Adaptive`: ELLE-A's λ rule for every weighted term of the method (ELLE λ, AAER λ1, GradAlign
  λ, LAP β): each weight is s·w, w the configured one, s = 0 at the start, s ← 1 at a trigger,
  else s ← decay^k·s over the k steps between two checks.
* `Rollback`: at a trigger, the state of `checks_back` checks before is restored (kept in
  memory, `snapshots` of them) and training goes on with the method changed by `switch`
  (`SWITCHES`), once per run.
* `Off`: the signals are measured and logged, nothing else.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from fat_jax.methods.signals import SIGNALS
from fat_jax.methods.spec import Method
from fat_jax.methods.training_attacks import FGSMAttack

# Method changes of a rollback: the fields of the single-step FGSM attack they set (α × ε).
SWITCHES = {
    'none': {},
    'n_fgsm': dict(init='uniform', init_scale=2.0, alpha=1.0, project=False),
    'fgsm_rs': dict(init='uniform', init_scale=1.0, alpha=1.25, project=True),
}
# The weighted terms `Adaptive` scales: (role, weight field, the config field that sets it).
WEIGHTED_TERMS = (('ELLE', 'lam', 'elle.lam'), ('AAER', 'lambda1', 'aaer.lambda1'),
                  ('GradAlign', 'lam', 'gradalign.lam'), ('LAP', 'beta', 'lap.beta'))


@dataclasses.dataclass(frozen=True)
class Detector:
  """Per signal: triggered when direction·(v − μ) > `sensitivity`·σ, μ and σ (population) of
  the earlier values (the last `window`, 0 = all), once at least `min_count` are known."""
  sensitivity: float = 2.0
  window: int = 0
  min_count: int = 3

  def triggered(self, history: Sequence[float], value: float, direction: int) -> bool:
    past = np.asarray(history[-self.window:] if self.window else history, np.float64)
    if len(past) < self.min_count:
      return False
    return bool(direction * (value - past.mean()) > self.sensitivity * past.std())


@dataclasses.dataclass(frozen=True)
class Off:
  """Signals measured and logged; training untouched."""
  name = 'off'


@dataclasses.dataclass(frozen=True)
class Adaptive:
  """ELLE-A's rule on the method's weighted terms (the module doc); `decay` per step."""
  decay: float = 0.99
  name = 'adaptive'

  def next_scale(self, scale: float, triggered: bool, steps: int) -> float:
    """s after a check `steps` steps after the previous one."""
    return 1.0 if triggered else scale * self.decay ** steps


@dataclasses.dataclass(frozen=True)
class Rollback:
  """At a trigger: restore the state of `checks_back` checks before (of the `snapshots` kept)
  and continue with `switch` (a key of `SWITCHES`), once per run."""
  switch: str = 'n_fgsm'
  checks_back: int = 1
  snapshots: int = 2
  name = 'rollback'


POLICIES = {p.name: p for p in (Off, Adaptive, Rollback)}


@dataclasses.dataclass(frozen=True)
class Guard:
  """The signals measured every `every` steps on a fixed training batch of `batch_size` (held
  out of training when `hold_out`), the ones whose trigger acts (`act_on`), the detector and the
  policy."""
  signals: tuple
  act_on: tuple[str, ...]
  every: int
  detector: Detector
  policy: Any
  batch_size: int = 128
  hold_out: bool = True

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(s.name for s in self.signals)

  def direction(self, name: str) -> int:
    return SIGNALS[name].direction


def weighted_terms(method: Method) -> list[str]:
  """The config fields of the weighted terms `method` has (those `Adaptive` scales)."""
  parts = (*method.regularizers, method.weights)
  return [field for role, _, field in WEIGHTED_TERMS
          if any(type(p).__name__ == role for p in parts)]


def scaled_method(method: Method, scale) -> Method:
  """`method` with every weighted term's weight × `scale` (a float or a traced scalar)."""
  def scaled(part):
    for role, attr, _ in WEIGHTED_TERMS:
      if part is not None and type(part).__name__ == role:
        return dataclasses.replace(part, **{attr: getattr(part, attr) * scale})
    return part
  return dataclasses.replace(method, regularizers=tuple(map(scaled, method.regularizers)),
                             weights=scaled(method.weights))


def switched_method(method: Method, switch: str) -> Method:
  """`method` with its FGSM attack changed as `SWITCHES[switch]` says."""
  fields = dict(SWITCHES[switch])
  if not fields:
    return method
  fields['alpha'] = fields['alpha'] * method.attack.eps
  return dataclasses.replace(method, attack=dataclasses.replace(method.attack, **fields))


def _policy(c, method: Method):
  """The policy of `c.policy`, refused when it cannot apply to `method`."""
  if c.policy not in POLICIES:
    raise ValueError(f'Unknown guard.policy {c.policy!r}; known: {sorted(POLICIES)}.')
  if c.policy == 'adaptive':
    if not 0 <= c.decay <= 1:
      raise ValueError(f'guard.decay must be in [0, 1], got {c.decay}.')
    if not weighted_terms(method):
      raise ValueError(
          f"guard.policy='adaptive' scales a weighted term (method."
          f"{', method.'.join(f for _, _, f in WEIGHTED_TERMS)}); method {method.name!r} has "
          'none: set one of them.')
    if method.elle is not None and method.elle.adaptive:
      raise ValueError("guard.policy='adaptive' and ELLE-A (method.elle.adaptive) both set "
                       "ELLE's λ; use ELLE (method.elle.adaptive=False) under the guard.")
    return Adaptive(float(c.decay))
  if c.policy == 'rollback':
    if c.switch not in SWITCHES:
      raise ValueError(f'Unknown guard.switch {c.switch!r}; known: {sorted(SWITCHES)}.')
    if not 1 <= c.rollback_checks <= c.snapshots:
      raise ValueError(f'guard.rollback_checks={c.rollback_checks} must be ≥ 1 and at most '
                       f'the guard.snapshots={c.snapshots} kept in memory.')
    if SWITCHES[c.switch]:
      if not isinstance(method.attack, FGSMAttack):
        raise ValueError(f'guard.switch={c.switch!r} changes the start of the FGSM attack; '
                         f'method {method.name!r} trains with {type(method.attack).__name__}.')
      if switched_method(method, c.switch) == method:
        raise ValueError(f'guard.switch={c.switch!r} changes nothing in method '
                         f'{method.name!r}: its attack already starts that way.')
    return Rollback(c.switch, int(c.rollback_checks), int(c.snapshots))
  return Off()


def resolve_guard(c, method: Method) -> Guard | None:
  """The `Guard` of the config section `c` (`config.guard`) for `method`, None when it is off
  (`every` = 0). (The V_act node is checked against the model by `fat_jax.run.co_guard`.)"""
  if not c.every:
    if c.policy != 'off':
      raise ValueError(f'guard.policy={c.policy!r} acts on the signals, which guard.every = 0 '
                       'turns off; set guard.every > 0 (steps between two checks).')
    return None
  unknown = sorted(set(c.signals) - set(SIGNALS)) or sorted(set(c.act_on) - set(c.signals))
  if unknown or not c.signals:
    raise ValueError(f'guard.signals must name some of {sorted(SIGNALS)}, and guard.act_on '
                     f'some of guard.signals; got signals {tuple(c.signals)}, act_on '
                     f'{tuple(c.act_on)}.')
  if c.every < 0 or c.batch_size < 1 or c.sensitivity < 0 or c.window < 0 or c.pgd_steps < 1:
    raise ValueError('guard needs every ≥ 0, batch_size ≥ 1, sensitivity ≥ 0, window ≥ 0 and '
                     f'pgd_steps ≥ 1, got {c.every}, {c.batch_size}, {c.sensitivity}, '
                     f'{c.window} and {c.pgd_steps}.')
  train = bool(c.train_bn)
  options = {'vact': dict(node=c.node), 'fgsm_pgd_gap': dict(steps=int(c.pgd_steps))}
  signals = tuple(SIGNALS[name](train=train, **options.get(name, {})) for name in c.signals)
  return Guard(signals, tuple(c.act_on), int(c.every),
               Detector(float(c.sensitivity), int(c.window)), _policy(c, method),
               int(c.batch_size), bool(c.hold_out))

