"""Running a study's training runs one after the other, resumable: the part the study scripts
(`guard_study.py`, `cifar_sweep.py`) share.

A run with ``results.json`` in its workdir is skipped; a half-done one resumes from its
checkpoint (the same command); a failed run is retried once. Each run's output goes to
``<workdir>.log``; per run, a line of the study's ``times.tsv``: name, exit status, wall
seconds, load averages (1, 5, 15 min) at its start and at its end.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import time


def load() -> str:
  with open('/proc/loadavg') as f:
    return ' '.join(f.read().split()[:3])


def run_all(rows: list[tuple[str, list[str]]], times: str, dry_run: bool = False,
            nice: int = 5) -> None:
  """Runs each (workdir, command) of `rows` under ``nice -n <nice>`` (the commands only, with
  `dry_run`), logging to `times`."""
  for workdir, command in rows:
    if dry_run:
      print(shlex.join(command))
      continue
    if os.path.exists(os.path.join(workdir, 'results.json')):
      continue
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    for _ in range(2):  # a run that fails (e.g. killed) resumes from its checkpoint once
      start, load_start = time.time(), load()
      with open(workdir + '.log', 'a') as log:
        rc = subprocess.call(['nice', '-n', str(nice), *command], stdout=log,
                             stderr=subprocess.STDOUT)
      with open(times, 'a') as f:
        f.write(f'{os.path.basename(workdir)}\t{rc}\t{time.time() - start:.1f}\t{load_start}\t'
                f'{load()}\n')
      if rc == 0:
        break
