"""The CO-guard study in the quickstart setting (docs/co_guard.md, "Study"): its runs, one after
the other.

  python scripts/guard_study.py --eps=0.15            # run (or resume) every run of ε = 0.15
  python scripts/guard_study.py --eps=0.2 --dry-run   # print the commands only

Each run is `launch.py --config=configs/quickstart.py:<method>` with its flags, in
``<root>/eps<E>/<name>_s<seed>`` (log: the same path + ``.log``), under ``nice -n 5``, without the
report. Every run logs the six CO signals every 20 steps (`--config.guard.every=20`; policy
'off' except the guarded runs) and the monitor every 20 steps (`--config.eval.monitor_every_steps
=20`, the steps of the checks), so that a signal's trigger and the monitor's collapse are placed
on the same steps. The runs go one after the other as `study_runs.run_all` says (finished
ones skipped, half-done ones resumed; ``<root>/eps<E>/times.tsv``). The list is ordered so
that the runs of a first complete table (FGSM × 5, FGSM + rollback × 5, N-FGSM × 3) come
first.
"""
from __future__ import annotations

import argparse
import os
import sys

from study_runs import run_all

CHECKS = ['--config.guard.every=20', '--config.eval.monitor_every_steps=20',
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


def plan(eps: float, root: str) -> list[tuple[str, list[str]]]:
  """[(workdir, command)] of the study at `eps`, seeds 0, 1, ... of each entry of `RUNS`."""
  folder = os.path.join(root, f'eps{eps:g}')
  rows = []
  for name, method, flags, seeds in RUNS:
    for seed in range(seeds):
      workdir = os.path.join(folder, f'{name}_s{seed}')
      rows.append((workdir, [sys.executable, 'launch.py',
                             f'--config=configs/quickstart.py:{method}', f'--workdir={workdir}',
                             f'--config.eps={eps:g}', f'--config.seed={seed}', *CHECKS, *flags]))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--eps', type=float, default=0.15, help='training and evaluation ε')
  parser.add_argument('--root', default='runs/guard_study', help='the study\'s folder')
  parser.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
  args = parser.parse_args(argv)
  os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
  run_all(plan(args.eps, args.root), os.path.join(args.root, f'eps{args.eps:g}', 'times.tsv'),
          args.dry_run)


if __name__ == '__main__':
  main()
