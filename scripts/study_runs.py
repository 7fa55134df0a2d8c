"""Running a study's training runs, resumable: the part the study scripts (`guard_study.py`,
`cifar_sweep.py`) share.

A finished run's record (`RECORD_FILES`: its config, per-epoch and within-epoch records, CO
signals and final results, without checkpoints) is copied into ``<records>/<name>``, the folder
the study's tables and figures are made from (docs/co_guard.md, docs/cifar_study.md). A run
with a record there is not run again; a half-done one resumes from its checkpoint (the same
command); a failed run is retried once. `jobs` runs go at a time; `select` picks some of
them, in an order of one's own. Each run's output goes to ``<workdir>.log``; per run, a line
of ``<records>/times.tsv``: name, exit status, wall seconds, load averages (1, 5, 15 min) at its
start and at its end.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

RECORD_FILES = ('config.json', 'results.json', 'metrics.jsonl', 'monitor.jsonl',
                'signals.jsonl')
TIMES = 'times.tsv'


def load() -> str:
  with open('/proc/loadavg') as f:
    return ' '.join(f.read().split()[:3])


def keep_record(workdir: str, records: str) -> str:
  """Copies the `RECORD_FILES` that `workdir` has into ``records/<its name>``; returns that
  folder."""
  folder = os.path.join(records, os.path.basename(workdir))
  os.makedirs(folder, exist_ok=True)
  for name in RECORD_FILES:
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copyfile(os.path.join(workdir, name), os.path.join(folder, name))
  return folder


def select(rows: list[tuple[str, list[str]]], names: str | None) -> list[tuple[str, list[str]]]:
  """The rows of the runs named in `names` (comma-separated run names, e.g. ``fgsm_s3,n_fgsm_s0``),
  in that order; all of `rows` when `names` is empty. An unknown name is a ValueError listing
  the study's runs."""
  if not names:
    return rows
  by_name = {os.path.basename(workdir): (workdir, command) for workdir, command in rows}
  unknown = [n for n in names.split(',') if n not in by_name]
  if unknown:
    raise ValueError(f'No run {", ".join(unknown)} in this study; its runs: '
                     f'{", ".join(by_name)}.')
  return [by_name[n] for n in names.split(',')]


def add_arguments(parser, root: str, records: str) -> None:
  """The options every study script takes: its runs' and records' folders, --jobs, --runs,
  --dry-run."""
  parser.add_argument('--root', default=root, help="the runs' folder")
  parser.add_argument('--records', default=records,
                      help="the folder of the finished runs' records")
  parser.add_argument('--jobs', type=int, default=1, help='runs at a time')
  parser.add_argument('--runs', help='only these runs, in this order (comma-separated names, '
                      'e.g. fgsm_s3,n_fgsm_s0)')
  parser.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')


def run_selected(parser, args, rows: list[tuple[str, list[str]]], records: str) -> None:
  """`run_all` over the rows `args.runs` selects; an unknown name is the parser's error."""
  try:
    rows = select(rows, args.runs)
  except ValueError as e:
    parser.error(str(e))
  run_all(rows, records, args.dry_run, jobs=args.jobs)


def run_all(rows: list[tuple[str, list[str]]], records: str, dry_run: bool = False,
            nice: int = 5, jobs: int = 1) -> None:
  """Runs each (workdir, command) of `rows` under ``nice -n <nice>``, `jobs` at a time, and
  keeps their records in `records` (prints the commands only, with `dry_run`)."""
  if dry_run:
    for _, command in rows:
      print(shlex.join(command))
    return
  os.makedirs(records, exist_ok=True)
  times_lock = threading.Lock()

  def run_one(row):
    workdir, command = row
    if os.path.exists(os.path.join(records, os.path.basename(workdir), 'results.json')):
      return
    if os.path.exists(os.path.join(workdir, 'results.json')):  # finished, its record not kept
      keep_record(workdir, records)
      return
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    for _ in range(2):  # a run that fails (e.g. killed) resumes from its checkpoint once
      start, load_start = time.time(), load()
      with open(workdir + '.log', 'a') as log:
        rc = subprocess.call(['nice', '-n', str(nice), *command], stdout=log,
                             stderr=subprocess.STDOUT)
      with times_lock, open(os.path.join(records, TIMES), 'a') as f:
        f.write(f'{os.path.basename(workdir)}\t{rc}\t{time.time() - start:.1f}\t{load_start}\t'
                f'{load()}\n')
      if rc == 0:
        keep_record(workdir, records)
        return

  with ThreadPoolExecutor(jobs) as pool:
    list(pool.map(run_one, rows))
