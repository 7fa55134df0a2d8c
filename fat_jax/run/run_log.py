"""A run's files in its workdir: ``config.json``, ``metrics.jsonl`` (one JSON
record per epoch), ``monitor.jsonl`` (the monitor every `eval.monitor_every_steps`
steps inside epochs, if set), ``signals.jsonl`` (the CO guard's signals every `guard.every`
steps, if set: `fat_jax.run.co_guard`), ``results.json`` (the final evaluation), per-point arrays
(``.npz``) and ``report/report.md`` (`fat_jax.reports.report`). Only process 0 of a multi-host run
writes (`fat_jax.parallel.is_writer`); every process can read. Whole files are written
atomically (`atomic_write`, `atomic_write_json`).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from fat_jax.parallel import is_writer

CONFIG = 'config.json'
METRICS = 'metrics.jsonl'
MONITOR = 'monitor.jsonl'
SIGNALS = 'signals.jsonl'
RESULTS = 'results.json'
RESULT_FLAGS = 'eval_flags.npz'  # the final evaluation's per-point flags
REPORT = os.path.join('report', 'report.md')

log = logging.getLogger('fat_jax')


class CorruptLogError(ValueError):
  """A line before the last of a ``.jsonl`` file, or a ``.json`` file, is not JSON (not a torn
  write)."""


def _parse_lines(path: str) -> list[dict]:
  """The records of a ``.jsonl`` file. A torn last line (a write cut short by a crash: not
  valid JSON) is dropped with a warning; an unreadable line before the last is no torn write
  and raises `CorruptLogError`."""
  with open(path) as f:
    lines = [(number, line) for number, line in enumerate(f.read().split('\n'), 1)
             if line.strip()]
  records = []
  for i, (number, line) in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i + 1 < len(lines):
        raise CorruptLogError(f'{path}, line {number}, is not JSON ({e}): the file was edited '
                              'or damaged; repair or remove that line.') from None
      log.warning('Dropped the torn last line of %s (a write cut short): %.60s', path, line)
  return records


def append_record(workdir: str, record: dict, name: str = METRICS) -> None:
  if not is_writer():
    return
  with open(os.path.join(workdir, name), 'a') as f:
    f.write(json.dumps(record) + '\n')


def has_records(workdir: str, name: str = METRICS) -> bool:
  """Whether `name` holds anything (a torn line included)."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return bool(f.read().strip())


def read_records(workdir: str, up_to_epoch: int | None = None,
                 name: str = METRICS) -> list[dict]:
  """The records of `name`, keeping only epochs ≤ `up_to_epoch` (rewriting the file, which
  also drops a torn last line before the run appends to it)."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return []
  records = _parse_lines(path)
  if up_to_epoch is not None:
    records = [r for r in records if r['epoch'] <= up_to_epoch]
    if is_writer():
      atomic_write(path, ''.join(json.dumps(r) + '\n' for r in records))
  return records


def atomic_write(path: str, text: str) -> str:
  """Writes `text` to `path` whole or not at all: into ``path.tmp``, flushed to disk (fsync),
  then renamed over `path` (`os.replace`, atomic on POSIX), so that a crash leaves the old
  file or the new one, never a torn one. Writes on every process; callers check
  `is_writer`."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def atomic_write_json(path: str, obj, sort_keys: bool = True) -> str:
  """`obj` as JSON indented by 2 (keys sorted unless `sort_keys` is False), `atomic_write`."""
  return atomic_write(path, json.dumps(obj, indent=2, sort_keys=sort_keys))


def write_json(workdir: str, name: str, obj: dict) -> str:
  path = os.path.join(workdir, name)
  return atomic_write_json(path, obj) if is_writer() else path


def read_json(workdir: str, name: str):
  """The content of `name`, None when it does not exist; `CorruptLogError`, naming the file and
  what to do, when it is not JSON (cut short or edited)."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      rerun = ('rerun training with the config the run was trained with' if name == CONFIG
               else 'rerun the command that wrote it')
      raise CorruptLogError(f'{path} is not valid JSON ({e}): it was cut short or edited. '
                            f'Restore it from a backup, or delete it and {rerun}.') from None


def write_arrays(workdir: str, name: str, arrays: dict) -> str:
  """Per-point arrays as a compressed ``.npz`` file."""
  path = os.path.join(workdir, name)
  if is_writer():
    np.savez_compressed(path, **arrays)
  return path
