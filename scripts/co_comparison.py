"""Train several methods in one CPU-scale setting and print their comparison table.

  .venv/bin/python scripts/co_comparison.py --out=runs/co_eps0.15
  .venv/bin/python scripts/co_comparison.py --out=runs/co_eps0.2 --eps=0.2 --seeds=0,1

Each run is `launch.py --config=configs/quickstart.py:METHOD` (plus the overrides
given), so every row can be reproduced on its own; `--jobs` runs that many at once.
The table (`fat_jax.reports.aggregate`): final clean / FGSM / PGD accuracy (the config's
final evaluation), the best and last monitor PGD accuracy and the CO onset
epoch. Runs whose workdir already holds results.json are not trained again.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fat_jax.reports import aggregate  # pylint: disable=wrong-import-position

from fat_jax.run import run_log
from fat_jax.run.runs import load_runs  # pylint: disable=wrong-import-position

METHODS = 'fgsm,fgsm_rs,n_fgsm,gradalign,v_lap,r_lap,n_lap,rs_aaer,n_aaer'
COLUMNS = ('method', 'seed', 'clean', 'fgsm', 'pgd', 'monitor_pgd', 'co_epoch')


def run(method: str, seed: int, args) -> str:
  """Train (unless `workdir` already holds results) and return the workdir."""
  workdir = os.path.join(args.out, f'{method}_seed{seed}')
  if run_log.read_json(workdir, run_log.RESULTS) is not None:
    return workdir
  cmd = [sys.executable, os.path.join(ROOT, 'launch.py'),
         f'--config={os.path.join(ROOT, "configs", "quickstart.py")}:{method}',
         f'--workdir={workdir}', f'--config.seed={seed}', '--config.progress=False']
  if args.eps is not None:
    cmd.append(f'--config.eps={args.eps}')
  cmd += args.override
  with open(os.path.join(args.out, f'{method}_seed{seed}.log'), 'w') as log:
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
  return workdir


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--methods', default=METHODS)
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--eps', type=float, default=None)
  parser.add_argument('--jobs', type=int, default=2)
  parser.add_argument('override', nargs='*', help='extra --config.x=y flags for every run')
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  jobs = [(m, int(s)) for s in args.seeds.split(',') for m in args.methods.split(',')]
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    workdirs = list(pool.map(lambda job: run(*job, args), jobs))
  print(aggregate.markdown_table(load_runs(workdirs), COLUMNS))


if __name__ == '__main__':
  main()
