"""What an evaluation report looks like outside Python: the console table and the JSON file."""
from __future__ import annotations

from fat_jax.run.run_log import atomic_write_json


def format_table(report: dict) -> str:
  """The console table of a report: accuracy after each attack (and, in individual mode, of
  each attack alone), time, passes per point; for a randomised model both scores, named."""
  n = report['n']
  rows = [('clean', report['clean_accuracy'])] + list(report['robust_accuracy_by_attack'].items())
  alone = report.get('robust_accuracy_individual')
  norm = report.get('norm', 'Linf')
  lines = [f"suite {report['suite']}  norm {norm}  eps {report['eps']:.5f}  n {n}  "
           f"seed {report['seed']}" + ('  individual' if alone else ''),
           f"{'attack':<10} {'accuracy':>9} " + (f"{'alone':>9} " if alone else '')
           + f"{'time (s)':>9} {'fwd/pt':>8} {'bwd/pt':>8}"]
  for name, acc in rows:
    p = report['passes'][name]
    own = '' if not alone else (f"{alone[name]:>9.4f} " if name in alone else f"{'':>9} ")
    lines.append(f"{name:<10} {acc:>9.4f} {own}{report['time_by_attack_s'][name]:>9.1f} "
                 f"{p['forward'] / n:>8.1f} {p['backward'] / n:>8.1f}")
  if report['randomized']:
    lo, hi = report['robust_accuracy_ci95']
    rule = report['autoattack_rand_rule']
    lines.append(f"expected per-draw robust accuracy {report['robust_accuracy']:.4f} "
                 f"(95% [{lo:.4f}, {hi:.4f}], {report['n_draws']} fresh draws; majority vote "
                 f"{report['robust_majority_accuracy']:.4f})")
    final = (f"AutoAttack 'rand' rule (broken if any single draw misclassifies) robust accuracy "
             f"{rule['robust_accuracy']:.4f} (clean {rule['clean_accuracy']:.4f})")
  else:
    final = f"robust accuracy {report['robust_accuracy']:.4f}"
  timing = report.get('timing')
  lines.append(final + f"  wall {report['wall_time_s']:.1f} s" + (
      f" (suite {timing['suite_s']:.1f} s, checks {timing['checks_s']:.1f} s)" if timing else '')
      + (f" on {report['devices']}" if 'devices' in report else ''))
  for name, check in report.get('checks', {}).items():
    lines.append(f"check {name:<15} {check['status']:<13} {check['message']}")
  return '\n'.join(lines)


def save_report(report: dict, path: str) -> str:
  """Writes the JSON part of `report` (without the per-point arrays) to `path`."""
  return atomic_write_json(
      path, {k: v for k, v in report.items() if k not in ('flags', 'scores', 'x_adv')})
