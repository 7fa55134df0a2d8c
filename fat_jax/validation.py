"""Checks at the door: a run's config, and `evaluate()`'s inputs, before any data is loaded,
any model compiled or any epoch run.

Every mistake gives one short line naming the field and the fix; all mistakes of a config
are reported together in one `ConfigError`. ε is in pixel units of [0, 1] (8/255, not 8):
values above `attacks.core.PIXEL_UNITS_WARNING` are legal but almost always a unit mistake, and
warn (`eps_problem`, shared with the attacks).
"""
from __future__ import annotations

import math
from typing import Collection

import numpy as np

from fat_jax.attacks.core import THREAT_MODELS, eps_problem

SEED_LIMIT = 2 ** 63       # seeds are integers in [0, 2^63): NumPy's and JAX's generators
# `evaluate()`'s counts, each also the field eval.<name> of a run config where that exists:
# integers ≥ 1, and those below ≥ 0 with what 0 means.
EVAL_POSITIVE = ('batch_size', 'pgd_steps', 'pgd_restarts', 'check_pgd_steps', 'sweep_steps',
                 'n_draws', 'eot_samples', 'apgd_steps', 'apgd_restarts', 'apgd_t_restarts',
                 'n_target_classes', 'fab_steps', 'fab_restarts', 'fab_t_restarts',
                 'square_queries', 'mm_steps', 'mm_target_classes', 'md_steps', 'md_restarts',
                 'pma_steps', 'pma_restarts')
EVAL_COUNTS = {'eot_check_n': 'off', 'md_change_point': 'the whole margin from the second step'}
# `evaluate()`'s real settings, likewise: name -> (low, high, low excluded, what it is); the
# high end is included unless infinite.
EVAL_RANGES = {
    'pgd_step_size': (0, math.inf, True, 'the PGD step as a multiple of ε, e.g. 0.25'),
    'apgd_rho': (0, 1, False, "APGD's step-halving threshold, a fraction (0.75)"),
    'fab_alpha_max': (0, 1, False, "FAB's largest weight of the biased step (0.1)"),
    'fab_eta': (0, math.inf, True, "FAB's overshoot factor (1.05)"),
    'fab_beta': (0, 1, False, "FAB's backward step, a fraction (0.9)"),
    'square_p_init': (0, 1, True, "Square's initial fraction of pixels changed (0.8)"),
}
# (field, what 0 means): counts ≥ 0.
COUNTS = {'data.n_train': 'all', 'data.n_test': 'all', 'eval.n': 'all', 'eval.monitor_n': 'all',
          'eval.monitor_every_steps': 'off', 'analysis.n_train': 'all', 'analysis.n': 'all',
          **{f'eval.{name}': zero for name, zero in EVAL_COUNTS.items()}}
POSITIVE = ('batch_size', 'num_epochs', 'eval.monitor_pgd_steps', 'eval.monitor_pgd_restarts',
            'analysis.batch_size', 'analysis.pgd_steps', 'checkpoint_keep',
            *(f'eval.{name}' for name in EVAL_POSITIVE))
RANGES = {'method.mep.label_smoothing': (0, 1, False, "FGSM-MEP's true-class probability"),
          'method.mep.decay': (0, 1, False, "FGSM-MEP's momentum decay"),
          'method.atas.beta': (0, 1, False, "ATAS's momentum of the squared gradient norm"),
          'ema_decay': (0, 1, False, 'the weight EMA decay τ < 1, e.g. 0.995 (0 = off)'),
          'ema_warmup': (0, 1, False, 'the EMA warm-up as a fraction of the training steps'),
          **{f'eval.{name}': rule for name, rule in EVAL_RANGES.items()}}
NON_NEGATIVE = ('optim.lr_max', 'optim.weight_decay', 'eval.input_noise')
EPSILONS = ('eps', 'eval.eps')


class ConfigError(ValueError):
  """A config or an argument holds a value that cannot be meant; the message says which."""


def _raise(problems: list[str]) -> None:
  if problems:
    raise ConfigError('\n'.join(problems))


def dotted_field(config, dotted: str):
  """The field `dotted` ('eval.n', 'method.lap.beta') of a config, None where it is missing."""
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


def seed_problem(seed, field: str = 'seed') -> str | None:
  """Why `seed` cannot seed a run (None if it can): an integer in [0, `SEED_LIMIT`)."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
      0 <= seed < SEED_LIMIT):
    return f'{field}={seed!r} is not a seed: give an integer in [0, 2^63), e.g. 0.'
  return None


def count_problem(field: str, value, zero: str | None = None) -> str | None:
  """Why `value` cannot be the count `field` (None if it can): an integer ≥ 1, or ≥ 0 where
  `zero` says what 0 means."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    return f'{field}={value!r} is not an integer: give a count.'
  if zero is None and value < 1:
    return f'{field}={value} must be positive: give an integer ≥ 1.'
  if value < 0:
    return f'{field}={value} is negative: give a count ≥ 0 (0 = {zero}).'
  return None


def range_problem(field: str, value, rule: tuple) -> str | None:
  """Why `value` falls outside `rule` = (low, high, low excluded, what it is) (None if not)."""
  low, high, low_excluded, what = rule
  interval = f"{'(' if low_excluded else '['}{low:g}, {high:g}{')' if math.isinf(high) else ']'}"
  try:
    number = float(value)
  except (TypeError, ValueError):
    return f'{field}={value!r} is not a number: give {what}.'
  above_low = low < number if low_excluded else low <= number
  if math.isfinite(number) and above_low and number <= high:
    return None
  return f'{field}={value} must be finite and in {interval}: give {what}.'


def config_problems(config, training: bool = False, suites: Collection[str] = ()) -> list[str]:
  """One line per mistake in a run config (`fat_jax.config.default_config` layout).

  `eval.norm` is the evaluation's threat model ('Linf' or 'L2'; `eval.eps` is checked in it);
  with `training` (a training run) it must be 'Linf': training, its monitor and its final
  evaluation are L∞ only. `eval.suite` must be one of `suites` when they are given (the callers
  above `fat_jax.evaluate` pass its `SUITES`, whose package imports this module)."""
  problems = [f'{name}={value} is not finite.' for name, value in _numbers(config)
              if isinstance(value, float) and not math.isfinite(value)]
  bad = {p.split('=')[0] for p in problems}
  norm = dotted_field(config, 'eval.norm') or 'Linf'
  if norm not in THREAT_MODELS:
    problems.append(f"eval.norm={norm!r} is not a threat model: use 'Linf' or 'L2'.")
  elif training and norm != 'Linf':
    problems.append(f"eval.norm={norm!r}: fat_jax trains (and monitors) under L∞ only; train "
                    "with eval.norm='Linf', then evaluate the run under L2 with "
                    '--mode=eval --config.eval.norm=L2.')
  for field in EPSILONS:
    value = dotted_field(config, field)
    if value is not None and field not in bad:
      problem = eps_problem(value, field, norm if field == 'eval.eps' and norm in THREAT_MODELS
                            else 'Linf')
      problems += [problem] if problem else []
  problems += [seed_problem(config['seed'])] if 'seed' in config else []
  suite = dotted_field(config, 'eval.suite')
  if suites and suite is not None and suite not in suites:
    problems.append(f'eval.suite={suite!r} is not a suite: use one of {", ".join(suites)}.')
  problems += [count_problem(field, dotted_field(config, field), zero)
               for field, zero in COUNTS.items() if dotted_field(config, field) is not None]
  problems += [count_problem(field, dotted_field(config, field)) for field in POSITIVE
               if dotted_field(config, field) is not None]
  problems += [range_problem(field, dotted_field(config, field), rule)
               for field, rule in RANGES.items()
               if dotted_field(config, field) is not None and field not in bad]
  if dotted_field(config, 'ema_decay') == 1:  # RANGES include their high end
    problems.append('ema_decay=1 would never move the average: give τ in [0, 1), e.g. 0.995.')
  for field in NON_NEGATIVE:
    value = dotted_field(config, field)
    if value is not None and field not in bad and value < 0:
      problems.append(f'{field}={value} must be ≥ 0.')
  return [p for p in problems if p]


def validate_config(config, training: bool = False, suites: Collection[str] = ()) -> None:
  """Raise one `ConfigError` listing every mistake of `config` (one line each;
  `config_problems`)."""
  _raise(config_problems(config, training, suites))


def _real(dtype) -> bool:
  return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def argument_problems(settings: dict, x, y) -> list[str]:
  """One line per mistake in the arguments of `fat_jax.evaluate.evaluate` that need no model,
  read before any cast: its `settings` (name -> value: the seed, the counts `EVAL_POSITIVE`
  and `EVAL_COUNTS`, the real settings `EVAL_RANGES`; other names, and None for a count or a
  real setting, pass), points `x` (N, ...) of real numbers and labels `y` (N,) of an integer
  or a float dtype (bool labels, a mask rather than classes, are refused)."""
  problems = [seed_problem(settings.get('seed'))]
  for name, value in settings.items():
    if value is not None and name in EVAL_POSITIVE + tuple(EVAL_COUNTS):
      problems.append(count_problem(name, value, EVAL_COUNTS.get(name)))
    elif value is not None and name in EVAL_RANGES:
      problems.append(range_problem(name, value, EVAL_RANGES[name]))
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim == 0 or not len(x):
    problems.append(f'x of shape {x.shape} holds no points: pass an array (N, ...), N ≥ 1.')
  if not _real(x.dtype):
    problems.append(f'x of dtype {x.dtype} is not pixels: pass float32 in [0, 1].')
  if y.dtype == bool:
    problems.append('labels are bool (a mask?): pass class indices, e.g. y.astype(int) for '
                    'the classes 0 and 1.')
  elif not _real(y.dtype):
    problems.append(f'labels of dtype {y.dtype} are not class indices: pass integers.')
  if y.ndim != 1:
    hint = ('' if y.ndim != 2 else ': one-hot? pass y.argmax(-1)' if y.shape[1] > 1 else
            ': pass y.reshape(-1)')
    problems.append(f'labels must be class indices of shape (N,), got {y.shape}{hint}.')
  elif x.ndim and len(y) != len(x):
    problems.append(f'x of shape {x.shape} holds {len(x)} points, labels of shape {y.shape} '
                    f'{len(y)}: pass one label per point.')
  return [p for p in problems if p]


def evaluation_problems(eps, x, y, n_classes: int, norm: str = 'Linf') -> list[str]:
  """One line per mistake in the arguments of `fat_jax.evaluate.evaluate` (shapes and dtypes
  as `argument_problems` accepts them) given the model's `n_classes`: ε a radius of `norm`
  (L∞: in [0, 1]), finite inputs, labels whole numbers in [0, n_classes) (others would count
  as errors)."""
  problems = [eps_problem(eps, norm=norm)]
  x, y = np.asarray(x), np.asarray(y)
  bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
  if bad.any():
    problems.append(f'{int(bad.sum())} inputs hold NaN or inf (first at index '
                    f'{int(np.flatnonzero(bad)[0])}): pass finite pixels in [0, 1].')
  fractional = np.isfinite(y) & (y != np.round(y))
  if fractional.any():
    first = int(np.flatnonzero(fractional)[0])
    problems.append(f'{int(fractional.sum())} labels are not whole numbers (e.g. y[{first}] = '
                    f'{y[first]}): pass class indices, not scores or probabilities.')
  outside = ~np.isfinite(y) | (y < 0) | (y >= n_classes)
  if outside.any():
    first = int(np.flatnonzero(outside)[0])
    problems.append(f'{int(outside.sum())} labels are not classes 0..{n_classes - 1} of the '
                    f'model (e.g. y[{first}] = {y[first]}): pass integer labels in '
                    f'[0, {n_classes}).')
  return [p for p in problems if p]


def validate_arguments(settings: dict, x, y) -> None:
  """Raise one `ConfigError` listing every mistake of `argument_problems`."""
  _raise(argument_problems(settings, x, y))


def validate_evaluation(eps, x, y, n_classes: int, norm: str = 'Linf') -> None:
  """Raise one `ConfigError` listing every mistake of `evaluation_problems`."""
  _raise(evaluation_problems(eps, x, y, n_classes, norm))
