"""MM, MD, PMA next to AutoAttack-standard on the same points of trained runs, and the
binarization test's verdict.

Run it from the repository root (each suite is a `launch.py` process).
  python benchmarks/eval_suites.py suites runs/quickstart/fgsm_rs runs/quickstart/fgsm --n=500
  python benchmarks/eval_suites.py table runs/quickstart/fgsm_rs runs/quickstart/fgsm --n=500
  python benchmarks/eval_suites.py binarization runs/quickstart/fgsm_rs runs/quickstart/fgsm --n=20

`suites`: per run directory, each suite as its own `launch.py --mode=eval` process on the
first n test points (checks and the Square check off), then a Markdown table: clean and
robust accuracy, the report's `wall_time_s` (compilation included: one process per suite),
points/s = n / wall_time_s, its speed next to aa_standard's, the fraction of points whose
robust flag (eval_<suite>_flags.npz) equals aa_standard's, forward and backward passes per
point, and the process's own wall time (imports included). `table` prints the same table
from the reports already written (no process time). `uptime` is printed first and after
each table.
`binarization`: `binarization_test` (APGD-CE, the default) on the first n test points of
each run, and of the first run behind input quantisation to 16 levels (zero input
gradient: the masked model of tests/test_binarization.py), with
`sanity.check_binarization`'s verdict.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SUITES = ('aa_standard', 'mm', 'mm+', 'md', 'mdmt', 'mde', 'pma', 'pma+')


def run_suite(workdir: str, suite: str, n: int, cpu_devices: str) -> float:
  """One `--mode=eval` process (`config.cpu_devices`); returns its wall time in seconds
  (imports included)."""
  cmd = [sys.executable, 'launch.py', f'--config=configs/from_workdir.py:{workdir}',
         f'--workdir={workdir}', '--mode=eval', f'--config.eval.suite={suite}',
         f'--config.eval.n={n}', '--config.eval.checks=False',
         '--config.eval.square_check=False', '--config.progress=False',
         f'--config.cpu_devices={cpu_devices}']
  start = time.time()
  with open(os.path.join(workdir, f'bench_{suite}.log'), 'w') as log:
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
  return time.time() - start


def suites_table(workdir: str, suites, n: int, run: bool = True, cpu_devices: str = 'auto') -> str:
  """Runs the suites (unless `run` is False: the reports already written) and tabulates."""
  rows, aa = [], None
  for suite in suites:
    process_s = run_suite(workdir, suite, n, cpu_devices) if run else None
    with open(os.path.join(workdir, f'eval_{suite}.json')) as f:
      report = json.load(f)
    robust = np.load(os.path.join(workdir, f'eval_{suite}_flags.npz'))['robust']
    if suite == 'aa_standard':
      aa = (report, robust)
    rows.append((suite, report, robust, process_s))
  lines = ['| suite | clean | robust | wall s | points/s | × AA speed | agree with AA | fwd/pt '
           '| bwd/pt | process s |', '|---|---|---|---|---|---|---|---|---|---|']
  for suite, report, robust, process_s in rows:
    wall = report['wall_time_s']
    speed = aa[0]['wall_time_s'] / wall if aa else float('nan')
    agree = float(np.mean(robust == aa[1])) if aa else float('nan')
    lines.append(f"| {suite} | {report['clean_accuracy']:.3f} | {report['robust_accuracy']:.3f} "
                 f'| {wall:.1f} | {report["n"] / wall:.1f} | {speed:.2f} | {agree:.3f} '
                 f"| {report['forward_passes'] / report['n']:.0f} "
                 f"| {report['backward_passes'] / report['n']:.0f} "
                 f"| {'—' if process_s is None else f'{process_s:.1f}'} |")
  return '\n'.join(lines)


def binarization(workdirs, n: int) -> None:
  import jax.numpy as jnp
  from fat_jax.evaluate import sanity
  from fat_jax.evaluate import binarization_test
  from fat_jax.evaluate.classifier import Classifier
  from fat_jax.methods import evaluated_weights
  from fat_jax.run.runs import Run

  def verdict(name, model, x, eps):
    start = time.time()
    r = binarization_test(model, x, eps=eps)
    v = sanity.check_binarization(r['attack_success'], r['n_sampled'], r['attacks'],
                                  r['setup_failures'])
    print(f"| {name} | {r['feature_node']} | {v['n_tested']} of {v['n_sampled']} | "
          f"{v['status']} | {v['fraction_failed']} | {time.time() - start:.0f} |", flush=True)

  print('| model | feature node | points set up | verdict | fraction failed | s |')
  print('|---|---|---|---|---|---|')
  first = None
  for workdir in workdirs:
    run = Run.open(workdir)
    model, ts, _ = run.restore()
    x, _ = run.points('test', n)
    params = evaluated_weights(ts)[1]
    verdict(workdir, Classifier(model.apply, params, ts.batch_stats), x, run.eval_eps)
    first = first or (model, params, ts.batch_stats, x, run.eval_eps, workdir)
  model, params, state, x, eps, workdir = first

  def quantized(p, s, inputs, train):
    return model.apply(p, s, jnp.round(inputs * 16) / 16, train)

  verdict(f'{workdir} behind 16-level input quantisation', Classifier(quantized, params, state),
          x, eps)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('what', choices=('suites', 'table', 'binarization'))
  p.add_argument('workdirs', nargs='+')
  p.add_argument('--n', type=int, default=500)
  p.add_argument('--suites', default=','.join(SUITES))
  p.add_argument('--cpu-devices', default='auto', help="each process's config.cpu_devices")
  args = p.parse_args()
  print('$ uptime:', subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip())
  if args.what == 'binarization':
    binarization(args.workdirs, args.n)
  else:
    for workdir in args.workdirs:
      print(f'\n{workdir} (n = {args.n})\n', flush=True)
      print(suites_table(workdir, args.suites.split(','), args.n, args.what == 'suites',
                         args.cpu_devices), flush=True)
      print('$ uptime:', subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip())


if __name__ == '__main__':
  main()
