"""The CO-guard study (docs/co_guard.md, "Study"): its runs, in the quickstart setting or the
CPU-scale CIFAR-10 one.

  python scripts/guard_study.py --eps=0.15            # run (or resume) every run of ε = 0.15
  python scripts/guard_study.py --eps=0.2 --dry-run   # print the commands only
  python scripts/guard_study.py --setting=cifar --data-dir=../shared/data/cifar-10-subset --jobs=2

Each run is `launch.py --config=configs/quickstart.py:<method>` with its flags, in
``<root>/eps<E>/<name>_s<seed>`` (log: the same path + ``.log``), under ``nice -n 5``, without the
report. Every run logs the six CO signals every 20 steps (`--config.guard.every=20`; policy
'off' except the guarded runs) and the monitor every 20 steps (`--config.eval.monitor_every_steps
=20`, the steps of the checks), so that a signal's trigger and the monitor's collapse are placed
on the same steps. The runs go as `study_runs.run_all` says (`--jobs` at a time, finished ones
skipped, half-done ones resumed), their records kept in ``<records>/eps<E>/<name>_s<seed>``
(default docs/co_guard/runs), which the study's tables are made from. The list is ordered so
that the runs of a first complete table (FGSM × 5, FGSM + rollback × 5, N-FGSM × 3) come first.

The CIFAR-10 setting (``--setting=cifar``) runs `configs/cifar_subset.py:<method>_eps<E>` (ε =
E/255, default 12, where FGSM collapses there while N-FGSM holds) in ``<root>/cifar_eps<E>``,
with the signals every 39 steps (4 checks per epoch of 152 steps: the guard's 128 examples are
held out of training) and the monitor (PGD-10 on 500 test images) every 78; its runs are fewer
(`CIFAR_RUNS`), each about 20 quickstart runs' time.
"""
from __future__ import annotations

import argparse
import os
import sys

from study_runs import add_arguments, run_selected

CHECKS = ['--config.guard.every=20', '--config.eval.monitor_every_steps=20',
          '--config.report=False']
CIFAR_CHECKS = ['--config.guard.every=39', '--config.eval.monitor_every_steps=78',
                '--config.report=False']
# name → (quickstart method, extra flags, seeds), in the order they run.
RUNS = [
    ('fgsm', 'fgsm', [], 5),
    ('fgsm_rollback', 'fgsm', ['--config.guard.policy=rollback', '--config.guard.switch=n_fgsm'],
     5),
    ('n_fgsm', 'n_fgsm', [], 3),
    # FGSM + ELLE with the weight raised at a trigger: λ = 4000, ELLE-A's λ_max.
    ('fgsm_elle_adaptive', 'fgsm', ['--config.method.elle.lam=4000',
                                    '--config.guard.policy=adaptive'], 5),
    ('fgsm_rs', 'fgsm_rs', [], 3),
    ('elle', 'elle', [], 3),
    ('elle_a', 'elle_a', [], 3),
    ('r_lap', 'r_lap', [], 3),
    ('n_aaer', 'n_aaer', [], 3),
    ('pgd_at', 'pgd_at', [], 1),  # PGD-10: about 9 FGSM runs' time
]
# On CIFAR-10 a run costs about 20 quickstart runs: FGSM-RS and PGD-AT are left out.
CIFAR_RUNS = [run for run in RUNS if run[0] not in ('fgsm_rs', 'pgd_at')]


def plan(eps: float, root: str) -> list[tuple[str, list[str]]]:
  """[(workdir, command)] of the quickstart study at `eps`, seeds 0, 1, ... of each entry of
  `RUNS`."""
  return _rows(os.path.join(root, f'eps{eps:g}'), RUNS,
               lambda method: [f'--config=configs/quickstart.py:{method}', f'--config.eps={eps:g}',
                               *CHECKS])


def cifar_plan(eps_255: int, root: str, data_dir: str) -> list[tuple[str, list[str]]]:
  """[(workdir, command)] of the CIFAR-10 study at ε = `eps_255`/255 (`CIFAR_RUNS`)."""
  return _rows(os.path.join(root, f'cifar_eps{eps_255}'), CIFAR_RUNS,
               lambda method: [f'--config=configs/cifar_subset.py:{method}_eps{eps_255}',
                               f'--config.data.dir={data_dir}', *CIFAR_CHECKS])


def _rows(folder: str, runs, launch_flags) -> list[tuple[str, list[str]]]:
  rows = []
  for name, method, flags, seeds in runs:
    for seed in range(seeds):
      workdir = os.path.join(folder, f'{name}_s{seed}')
      rows.append((workdir, [sys.executable, 'launch.py', *launch_flags(method),
                             f'--workdir={workdir}', f'--config.seed={seed}', *flags]))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--setting', choices=('quickstart', 'cifar'), default='quickstart')
  parser.add_argument('--eps', type=float, default=None,
                      help='training and evaluation ε; quickstart: ε (0.15), cifar: ε·255 (12)')
  parser.add_argument('--data-dir', help='cifar: the folder of cifar-10-batches-py')
  add_arguments(parser, 'runs/guard_study', 'docs/co_guard/runs')
  args = parser.parse_args(argv)
  if args.setting == 'cifar' and not args.data_dir:
    parser.error('--setting=cifar needs --data-dir (the folder of cifar-10-batches-py)')
  data_dir = args.data_dir and os.path.abspath(args.data_dir)
  os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
  rows = (cifar_plan(int(args.eps or 12), args.root, data_dir) if args.setting == 'cifar' else
          plan(args.eps or 0.15, args.root))
  # The study's folder: each plan names it once, in its workdirs.
  study = os.path.basename(os.path.dirname(rows[0][0]))
  run_selected(parser, args, rows, os.path.join(args.records, study))


if __name__ == '__main__':
  main()
