"""The robust-accuracy-against-ε study of the CPU-scale CIFAR-10 setting (docs/cifar_study.md):
its runs, resumable (`study_runs`).

  python scripts/cifar_sweep.py --data-dir=../shared/data/cifar-10-subset
  python scripts/cifar_sweep.py --data-dir=... --dry-run     # print the commands only
  python -m fat_jax.reports.aggregate docs/cifar_study/runs/*_s[0-9] --sweep  # table, figure

Each run is `launch.py --config=configs/cifar_subset.py:<method>_eps<E>` in
``<root>/<method>_eps<E>_s<seed>``, without the end-of-run report, its record kept in
``<records>/<method>_eps<E>_s<seed>`` (`study_runs.run_all`; default docs/cifar_study/runs).
ε ∈ {8, 12, 16}/255; three seeds of FGSM, N-FGSM, R-LAP, N-AAER and PGD-AT, one of FGSM-RS,
GradAlign, V-LAP, N-LAP and RS-AAER. The order: the three-seed single-step methods seed by
seed, then seed 0 of PGD-AT (about five FGSM runs' time each), of the one-seed methods,
then seeds 1 and 2 of PGD-AT. Seed 0's runs keep every epoch's checkpoint (the layer study).
"""
from __future__ import annotations

import argparse
import os
import sys

from study_runs import add_arguments, run_selected

from fat_jax.configs import cifar_subset

EPSILONS = (8, 12, 16)
THREE_SEEDS = ('fgsm', 'n_fgsm', 'r_lap', 'n_aaer')
ONE_SEED = ('fgsm_rs', 'gradalign', 'v_lap', 'n_lap', 'rs_aaer')
SEEDS = (0, 1, 2)


def plan(root: str, data_dir: str) -> list[tuple[str, list[str]]]:
  """[(workdir, command)] of the study, in running order."""
  order = ([(m, e, s) for s in SEEDS for e in EPSILONS for m in THREE_SEEDS]
           + [('pgd_at', e, 0) for e in EPSILONS]
           + [(m, e, 0) for e in EPSILONS for m in ONE_SEED]
           + [('pgd_at', e, s) for s in SEEDS[1:] for e in EPSILONS])
  rows = []
  for method, eps, seed in order:
    workdir = os.path.join(root, f'{method}_eps{eps}_s{seed}')
    recipe = f'{method}_eps{eps}'
    # Seed 0 keeps the checkpoint of every epoch, for the layer study (docs/cifar_study.md).
    keep = ([f'--config.checkpoint_keep={cifar_subset.get_config(recipe).num_epochs}']
            if seed == 0 else [])
    rows.append((workdir, [sys.executable, 'launch.py',
                           f'--config=configs/cifar_subset.py:{recipe}',
                           f'--workdir={workdir}', f'--config.data.dir={data_dir}',
                           f'--config.seed={seed}', *keep, '--config.report=False']))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data-dir', required=True, help='the folder of cifar-10-batches-py')
  add_arguments(parser, 'runs/cifar_sweep', 'docs/cifar_study/runs')
  args = parser.parse_args(argv)
  data_dir = os.path.abspath(args.data_dir)
  os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
  run_selected(parser, args, plan(args.root, data_dir), args.records)


if __name__ == '__main__':
  main()
