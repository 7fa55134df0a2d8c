"""What an evaluation report looks like outside Python: the console table and the JSON file."""
from __future__ import annotations

import json
import os


def format_table(report: dict) -> str:
  """The console table of a report: accuracy after each attack, time, passes per point."""
  n = report['n']
  rows = [('clean', report['clean_accuracy'])] + list(report['robust_accuracy_by_attack'].items())
  lines = [f"suite {report['suite']}  eps {report['eps']:.5f}  n {n}  seed {report['seed']}",
           f"{'attack':<10} {'accuracy':>9} {'time (s)':>9} {'fwd/pt':>8} {'bwd/pt':>8}"]
  for name, acc in rows:
    p = report['passes'][name]
    lines.append(f"{name:<10} {acc:>9.4f} {report['time_by_attack_s'][name]:>9.1f} "
                 f"{p['forward'] / n:>8.1f} {p['backward'] / n:>8.1f}")
  final = f"robust accuracy {report['robust_accuracy']:.4f}"
  if report['randomized']:
    lo, hi = report['robust_accuracy_ci95']
    final += (f" (95% [{lo:.4f}, {hi:.4f}], {report['n_draws']} fresh draws; majority vote "
              f"{report['robust_majority_accuracy']:.4f})")
  timing = report.get('timing')
  lines.append(final + f"  wall {report['wall_time_s']:.1f} s" + (
      f" (suite {timing['suite_s']:.1f} s, checks {timing['checks_s']:.1f} s)" if timing else ''))
  for name, check in report.get('checks', {}).items():
    lines.append(f"check {name:<15} {check['status']:<8} {check['message']}")
  return '\n'.join(lines)


def save_report(report: dict, path: str) -> str:
  """Writes the JSON part of `report` (without the per-point arrays) to `path`."""
  content = {k: v for k, v in report.items() if k not in ('flags', 'scores', 'x_adv')}
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(content, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path
