"""Checks at the door: a run's config, and `evaluate()`'s inputs, before any data is loaded,
any model compiled or any epoch run.

Every mistake gives one short line naming the field and the fix; all mistakes of a config
are reported together in one `ConfigError`. ε is in pixel units of [0, 1] (8/255, not 8):
values above `PIXEL_UNITS_WARNING` are legal but almost always a unit mistake, and warn.
"""
from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger('fat_jax')

NORMS = ('Linf', 'L2')     # the evaluation's threat models (fat_jax.attacks.NORMS)
PIXEL_UNITS_WARNING = 0.5  # ε above this on [0, 1] images: likely given in 0–255 units
# (field, what it counts): 0 means all examples.
COUNTS = ('data.n_train', 'data.n_test', 'eval.n', 'eval.monitor_n', 'eval.monitor_every_steps',
          'eval.eot_check_n', 'analysis.n_train', 'analysis.n')
POSITIVE = ('batch_size', 'num_epochs', 'eval.batch_size', 'eval.pgd_steps',
            'eval.pgd_restarts', 'eval.monitor_pgd_steps', 'eval.monitor_pgd_restarts',
            'eval.check_pgd_steps', 'eval.n_draws', 'analysis.batch_size', 'checkpoint_keep')
NON_NEGATIVE = ('optim.lr_max', 'optim.weight_decay', 'eval.input_noise')
EPSILONS = ('eps', 'eval.eps')


class ConfigError(ValueError):
  """A config or an argument holds a value that cannot be meant; the message says which."""


def _get(config, dotted: str):
  for part in dotted.split('.'):
    if config is None or part not in config:
      return None
    config = config[part]
  return config


def _numbers(config, prefix: str = ''):
  """(dotted name, value) of every number in a ConfigDict (nested, and inside tuples)."""
  for key, value in config.items():
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      yield from _numbers(value, name + '.')
    elif isinstance(value, (tuple, list)):
      yield from ((f'{name}[{i}]', v) for i, v in enumerate(value)
                  if isinstance(v, (int, float)) and not isinstance(v, bool))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield name, value


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


def config_problems(config, training: bool = False) -> list[str]:
  """One line per mistake in a run config (`fat_jax.config.default_config` layout).

  `eval.norm` is the evaluation's threat model ('Linf' or 'L2'; `eval.eps` is checked in it);
  with `training` (a training run) it must be 'Linf': training, its monitor and its final
  evaluation are L∞ only."""
  problems = [f'{name}={value} is not finite.' for name, value in _numbers(config)
              if isinstance(value, float) and not math.isfinite(value)]
  bad = {p.split('=')[0] for p in problems}
  norm = _get(config, 'eval.norm') or 'Linf'
  if norm not in NORMS:
    problems.append(f"eval.norm={norm!r} is not a threat model: use 'Linf' or 'L2'.")
  elif training and norm != 'Linf':
    problems.append(f"eval.norm={norm!r}: fat_jax trains (and monitors) under L∞ only; train "
                    "with eval.norm='Linf', then evaluate the run under L2 with "
                    '--mode=eval --config.eval.norm=L2.')
  for field in EPSILONS:
    value = _get(config, field)
    if value is not None and field not in bad:
      problem = eps_problem(value, field, norm if field == 'eval.eps' and norm in NORMS
                            else 'Linf')
      problems += [problem] if problem else []
  for field in COUNTS:
    value = _get(config, field)
    if value is not None and value < 0:
      problems.append(f'{field}={value} is negative: give a count ≥ 0 (0 = all).')
  for field in POSITIVE:
    value = _get(config, field)
    if value is not None and value <= 0:
      problems.append(f'{field}={value} must be positive.')
  for field in NON_NEGATIVE:
    value = _get(config, field)
    if value is not None and field not in bad and value < 0:
      problems.append(f'{field}={value} must be ≥ 0.')
  return problems


def validate_config(config, training: bool = False) -> None:
  """Raise one `ConfigError` listing every mistake of `config` (one line each)."""
  problems = config_problems(config, training)
  if problems:
    raise ConfigError('\n'.join(problems))


def evaluation_problems(eps, x, y, n_classes: int, norm: str = 'Linf') -> list[str]:
  """One line per mistake in the arguments of `fat_jax.evaluate.evaluate`: ε a radius of
  `norm` (L∞: in [0, 1]), finite inputs, integer labels in [0, n_classes) (others would count
  as errors)."""
  problems = [eps_problem(eps, norm=norm)]
  x, y = np.asarray(x), np.asarray(y)
  bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
  if bad.any():
    problems.append(f'{int(bad.sum())} inputs hold NaN or inf (first at index '
                    f'{int(np.flatnonzero(bad)[0])}): pass finite pixels in [0, 1].')
  outside = ~np.isfinite(y) | (y < 0) | (y >= n_classes) | (y != np.round(y))
  if outside.any():
    first = int(np.flatnonzero(outside)[0])
    problems.append(f'{int(outside.sum())} labels are not classes 0..{n_classes - 1} of the '
                    f'model (e.g. y[{first}] = {y[first]}): pass integer labels in '
                    f'[0, {n_classes}).')
  return [p for p in problems if p]


def validate_evaluation(eps, x, y, n_classes: int, norm: str = 'Linf') -> None:
  """Raise one `ConfigError` listing every mistake of `evaluation_problems`."""
  problems = evaluation_problems(eps, x, y, n_classes, norm)
  if problems:
    raise ConfigError('\n'.join(problems))
