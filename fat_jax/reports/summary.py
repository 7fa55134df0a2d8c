"""Plain-text tables of runs: ``python -m fat_jax.reports.summary WORKDIR [WORKDIR ...]``.

For each run, the per-epoch monitor (clean / FGSM / PGD accuracy on the test
subset) with the detected CO onset, and the final evaluation.
"""
from __future__ import annotations

import os
import sys

from fat_jax.run import run_log
from fat_jax.run.runs import method_label, read_config


def epoch_table(workdir: str) -> str:
  """The per-epoch records of the run in `workdir` as a Markdown table."""
  rows = ['| epoch | train loss | clean | FGSM | PGD | CO | s/epoch |',
          '|---:|---:|---:|---:|---:|:---:|---:|']
  for r in run_log.read_records(workdir):
    rows.append(f"| {r['epoch']} | {r['train_loss']:.3f} | {r['clean_accuracy']:.3f} | "
                f"{r['fgsm_accuracy']:.3f} | {r['pgd_accuracy']:.3f} | "
                f"{'yes' if r['co_detected'] else ''} | {r['train_time_s']:.0f} |")
  return '\n'.join(rows)


def final_line(workdir: str) -> str:
  """One line with the final evaluation of the run in `workdir`."""
  r = run_log.read_json(workdir, run_log.RESULTS)
  if r is None:
    return f'{workdir}: no results.json yet'
  onset = r['co_onset_epoch']
  return (f"{r['method']} on {r['dataset']} (eps {r['train_eps']:.4g}, seed {r['seed']}): "
          f"epoch {r['evaluated_epoch']}, n={r['n']}: clean {r['clean_accuracy']:.3f}, "
          f"FGSM {r['fgsm_accuracy']:.3f}, PGD-{r['pgd_steps']}-{r['pgd_restarts']} "
          f"{r['pgd_accuracy']:.3f}; CO {'at epoch %d' % onset if onset else 'not detected'}; "
          f"{r['train_time_s']:.0f} s training")


def run_summary(workdir: str) -> str:
  """One screen at the end of a run: the final result and where its files are."""
  workdir = os.path.abspath(workdir)
  records = run_log.read_records(workdir)
  r = run_log.read_json(workdir, run_log.RESULTS)
  if r is None:
    return f'{workdir}: no results.json yet'
  checkpoints = os.path.join(workdir, 'checkpoints')
  kept = sorted(int(e) for e in os.listdir(checkpoints) if e.isdigit()) \
      if os.path.isdir(checkpoints) else []
  pgd = [e['pgd_accuracy'] for e in records]
  report = os.path.join(workdir, run_log.REPORT)
  onset = r['co_onset_epoch']
  config = read_config(workdir)
  rule = '─' * 78
  lines = [
      rule,
      f"{method_label(config['method'])} on {r['dataset']}, {r['model']}, "
      f"eps {r['train_eps']:.4g}, seed {r['seed']}: {len(records)} epochs, "
      f"{r['train_time_s']:.0f} s training",
      f"final (epoch {r['evaluated_epoch']}, n={r['n']}): clean {r['clean_accuracy']:.3f}  "
      f"FGSM {r['fgsm_accuracy']:.3f}  PGD-{r['pgd_steps']}-{r['pgd_restarts']} "
      f"{r['pgd_accuracy']:.3f}",
      f"monitor PGD accuracy best {max(pgd):.3f}, last {pgd[-1]:.3f}; "
      f"CO {'detected at epoch %d' % onset if onset else 'not detected'}" if pgd else
      'no epoch records',
      f"checkpoint  {os.path.join(checkpoints, str(kept[-1])) if kept else '(none)'}"
      f"{'  (kept epochs %s)' % kept if kept else ''}",
      f'metrics     {os.path.join(workdir, run_log.METRICS)}',
      f"results     {os.path.join(workdir, run_log.RESULTS)}  (per point: {run_log.RESULT_FLAGS})",
      f'report      {report}' if os.path.exists(report) else
      f'report      (none: python -m fat_jax.reports.report {workdir})',
      rule,
  ]
  return '\n'.join(lines)


def summarize(workdirs) -> str:
  return '\n\n'.join(f'## {os.path.basename(os.path.normpath(w))}\n\n{epoch_table(w)}\n\n'
                     f'{final_line(w)}' for w in workdirs)


if __name__ == '__main__':
  if len(sys.argv) < 2:
    sys.exit('usage: python -m fat_jax.reports.summary WORKDIR [WORKDIR ...]')
  print(summarize(sys.argv[1:]))
