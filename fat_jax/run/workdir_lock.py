"""One writer per workdir: ``WORKDIR/lock`` holds the pid and host of the process writing it.

A second writer fails at once with `WorkdirLockedError`, naming the holder. A lock left by
a process that died (its pid no longer exists on this host) is stale: it is taken over with a
warning (so is one naming this very process: a pid reused after a crash). A lock held from
another host cannot be checked for liveness and always refuses.
A multi-host run locks on process 0 only (the only one that writes files).

The lock file is created with O_CREAT | O_EXCL, so two processes starting together cannot
both create it; taking over a stale lock renames it away first, so that of two processes
finding the same stale lock only one proceeds.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket

from fat_jax.parallel import is_writer

log = logging.getLogger('fat_jax')

LOCK = 'lock'


class WorkdirLockedError(RuntimeError):
  """Another live process writes the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def _holder(path: str) -> dict | None:
  """The lock's content; {} when unreadable (being written); None when there is no lock."""
  try:
    with open(path) as f:
      return json.loads(f.read() or '{}')
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}


def _create(path: str) -> bool:
  """Create the lock for this process; False when it exists. A workdir that cannot be written
  (read-only, full, not this user's) is an `OSError` naming the workdir."""
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  except OSError as e:
    raise OSError(e.errno, f'cannot write to the workdir ({e.strerror})',
                  os.path.dirname(path)) from e
  with os.fdopen(fd, 'w') as f:
    json.dump({'pid': os.getpid(), 'host': socket.gethostname()}, f)
  return True


def acquire(workdir: str) -> str:
  """Take the lock of `workdir` (created if missing); returns the lock file's path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  for _ in range(3):
    if _create(path):
      return path
    holder = _holder(path)
    if holder is None:  # released in between
      continue
    pid, host = holder.get('pid'), holder.get('host')
    here = host == socket.gethostname()
    if not here or not isinstance(pid, int) or (pid != os.getpid() and _alive(pid)):
      where = (f'pid {pid} on host {host}' if pid else 'a process that is still writing the '
               'lock')
      raise WorkdirLockedError(
          f'{workdir} is in use by {where} (lock file {path}). Wait for that run to end or '
          'use another --workdir; if that process is gone' +
          ('' if here else ' (it ran on another host)') + ', delete the lock file.')
    stale = f'{path}.stale-{os.getpid()}'
    try:
      os.rename(path, stale)
    except FileNotFoundError:  # another process took it over first
      continue
    if _holder(stale) != holder:  # renamed a lock taken over in between: put it back
      os.rename(stale, path)
      continue
    os.remove(stale)
    log.warning('Took over the stale lock of %s: its process (pid %d on %s) no longer runs.',
                workdir, pid, host)
  raise WorkdirLockedError(f'Could not take the lock {path}: other processes keep changing '
                           'it. Use another --workdir.')


def release(path: str) -> None:
  holder = _holder(path)
  if holder and holder.get('pid') == os.getpid() and holder.get('host') == socket.gethostname():
    os.remove(path)


@contextlib.contextmanager
def locked(workdir: str):
  """Hold the lock of `workdir` for the block (process 0 only; others do nothing)."""
  if not is_writer():
    yield
    return
  path = acquire(workdir)
  try:
    yield
  finally:
    release(path)
