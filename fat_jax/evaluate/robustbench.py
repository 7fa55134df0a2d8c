"""A report as a RobustBench model-info entry (`RobustBench/robustbench`, ``model_info/<dataset>/
<threat model>/<Name>.json``): `robustbench_entry` builds it, `save_robustbench_entry` writes it.

RobustBench's fields: ``clean_acc`` and ``autoattack_acc`` are percentages as strings with two
decimals, ``eps`` a string ("8/255" for L∞ radii on the 1/255 grid, else the decimal, "0.5"),
``number_forward_passes`` the model's forwards per prediction, ``unreliable`` flags an
evaluation known to overestimate robustness. ``threat_model`` ('Linf' / 'L2') names the
leaderboard folder.
"""
from __future__ import annotations

import dataclasses

from fat_jax.evaluate import sanity
from fat_jax.evaluate.suites import suite_options
from fat_jax.run.run_log import atomic_write_json

AUTOATTACK_SUITES = ('aa_standard', 'aa_plus', 'aa_rand')
FULL_TEST_SET = 10000   # CIFAR-10/100 test points RobustBench evaluates on


def eps_string(eps: float, norm: str = 'Linf') -> str:
  """RobustBench's ε: "k/255" when an L∞ ε·255 is an integer k, else the decimal ("0.5")."""
  k = eps * 255
  if norm == 'Linf' and abs(k - round(k)) < 1e-6:
    return f'{round(k)}/255'
  return f'{eps:.6g}'


def _percent(accuracy: float) -> str:
  return f'{100 * accuracy:.2f}'


def _changed_settings(report: dict) -> dict:
  """The attack settings of `report` that differ from the reference AutoAttack version's."""
  reference = dataclasses.asdict(suite_options(report['suite'], {}, report['n_classes']))
  ignore = {'n_draws', 'pgd_steps', 'pgd_restarts', 'pgd_step_size'}
  if not report['randomized']:
    ignore.add('eot_samples')
  used = report['settings']
  return {k: used[k] for k in reference
          if k not in ignore and k in used and used[k] != reference[k]}


def robustbench_entry(report: dict, *, dataset: str, architecture: str, name: str = '',
                      link: str = '', authors: str = '', venue: str = '',
                      reported: float | None = None, additional_data: bool = False,
                      footnote: str = '', number_forward_passes: int = 1) -> dict:
  """The RobustBench model-info entry of an AutoAttack `report` of `evaluate`.

  ``autoattack_acc`` is the robust accuracy, for a randomised model the count of AutoAttack's
  'rand' rule (``report['autoattack_rand_rule']``, as RobustBench's own evaluation would
  count); the footnote says how the evaluation departs from RobustBench's (fewer points,
  other settings, sanity warnings, a randomised model), and ``unreliable`` is set when the
  attack settings are not the reference's or a sanity check warned.
  """
  suite = report['suite']
  if suite not in AUTOATTACK_SUITES:
    raise ValueError(f"RobustBench reports AutoAttack: suite {suite!r} is not one of "
                     f'{AUTOATTACK_SUITES}; evaluate with suite=\'aa_standard\'.')
  notes = [footnote] if footnote else []
  notes.append(f"Evaluated with fat_jax, suite {suite}"
               + (' (individual mode)' if report.get('individual') else '')
               + f", {report['n']} test points" + (
                   f' (RobustBench uses {FULL_TEST_SET})' if report['n'] < FULL_TEST_SET else ''))
  changed = _changed_settings(report)
  if changed:
    notes.append('Attack settings differ from AutoAttack\'s: '
                 + ', '.join(f'{k}={v}' for k, v in sorted(changed.items())) + '.')
  warned = sorted(k for k, c in report.get('checks', {}).items() if c['status'] == sanity.WARN)
  if warned:
    notes.append('Sanity checks warned: ' + ', '.join(warned) + '.')
  if report['randomized']:
    rule = report['autoattack_rand_rule']
    clean, robust = rule['clean_accuracy'], rule['robust_accuracy']
    notes.append(f"Randomised model: accuracies by AutoAttack's 'rand' rule (one draw per "
                 f"point and attack); expected per-draw robust accuracy "
                 f"{_percent(report['robust_accuracy'])}.")
  else:
    clean, robust = report['clean_accuracy'], report['robust_accuracy']
  entry = {'link': link, 'name': name, 'authors': authors, 'additional_data': additional_data,
           'number_forward_passes': number_forward_passes, 'dataset': dataset, 'venue': venue,
           'architecture': architecture, 'eps': eps_string(report['eps'], report['norm']),
           'clean_acc': _percent(clean)}
  if reported is not None:
    entry['reported'] = f'{reported:.2f}'
  entry.update(autoattack_acc=_percent(robust), footnote=' '.join(notes),
               unreliable=bool(changed or warned), threat_model=report['norm'])
  return entry


def save_robustbench_entry(entry: dict, path: str) -> str:
  """Writes `entry` to `path` (JSON, RobustBench's key order)."""
  return atomic_write_json(path, entry, sort_keys=False)
