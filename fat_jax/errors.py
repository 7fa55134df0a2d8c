"""The command line's account of an error: one line, not a traceback.

A storage failure (disk full, read-only or missing directory) often surfaces wrapped in
several layers of library exceptions, or as a TensorStore message carrying an
``os_error_code``; `one_line` reports the `OSError` at their root, with what to do.
`TracebackLog` keeps the tracebacks that would bury that line (the libraries' error records,
exceptions of background threads and of coroutines nobody awaits) in a file instead.
`command_name` is the launcher's command in the hints that every module prints.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import traceback

LOG = 'errors.log'

_TENSORSTORE_OS_ERROR = re.compile(r"os_error_code='(\d+)'")
_QUOTED_PATH = re.compile(r'"(/[^"]*)"')
_FREE_SPACE = 'free space or choose another --workdir'
STORAGE_HINTS = {
    errno.ENOSPC: f'the disk is full: {_FREE_SPACE}',
    errno.EDQUOT: f'the disk quota is used up: {_FREE_SPACE}',
    errno.EFBIG: 'a file size limit (ulimit -f, or the file system\'s) is reached: raise it or '
                 'choose another --workdir',
    errno.EROFS: 'the file system is read-only: choose a writable --workdir',
    errno.ENOTDIR: 'a part of the path is a file, not a folder',
}


LAUNCHER = 'fat-jax-train'
LAUNCH_SCRIPT = 'launch.py'
LAUNCH_MODULE = 'python -m fat_jax.launch'


def command_name(program: str | None = None) -> str:
  """The launcher's command where the user is, for the hints the library prints. `program` (the
  running one, ``sys.argv[0]``): a checkout's launch.py → ``python launch.py`` (its path as
  typed when it is not in the current folder); fat_jax/launch.py itself → ``python -m
  fat_jax.launch``; an installed console script (``fat-jax-*``) → ``fat-jax-train`` (beside it
  when it is not on the PATH); anything else (Python, a notebook, ``python -m
  fat_jax.formats.convert``) → ``fat-jax-train`` when it is on the PATH, else ``python
  launch.py`` in a checkout's root, else ``python -m fat_jax.launch``."""
  program = sys.argv[0] if program is None else program
  name = os.path.basename(program)
  if name == LAUNCH_SCRIPT:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), LAUNCH_SCRIPT)
    if os.path.abspath(program) == here:
      return LAUNCH_MODULE
    in_folder = os.path.abspath(program) == os.path.abspath(LAUNCH_SCRIPT)
    return f'python {shlex.quote(LAUNCH_SCRIPT if in_folder else program)}'
  if shutil.which(LAUNCHER):
    return LAUNCHER
  if name.startswith('fat-jax-'):
    return shlex.quote(os.path.join(os.path.dirname(program), LAUNCHER))
  return f'python {LAUNCH_SCRIPT}' if os.path.isfile(LAUNCH_SCRIPT) else LAUNCH_MODULE


def chain(error: BaseException):
  """`error` and the exceptions it was raised from or while handling, outermost first."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def storage_error(error: BaseException) -> OSError | None:
  """The storage failure at the root of `error`: an `OSError` with an errno, or one rebuilt
  from a TensorStore message's ``os_error_code`` and the last path it quotes; None if none."""
  for e in chain(error):
    if isinstance(e, OSError) and e.errno:
      return e
    code = _TENSORSTORE_OS_ERROR.search(str(e))
    if code:
      paths = _QUOTED_PATH.findall(str(e))
      return OSError(int(code.group(1)), os.strerror(int(code.group(1))), *paths[-1:])
  return None


def message(error: BaseException) -> str:
  """`error`'s text, an exception wrapped in its arguments unwrapped (ml_collections raises an
  AttributeError holding a KeyError holding the text)."""
  while len(error.args) == 1 and isinstance(error.args[0], BaseException):
    error = error.args[0]
  if len(error.args) == 1 and isinstance(error.args[0], str):
    return error.args[0].strip()
  return str(error).strip()


def one_line(error: BaseException) -> str:
  """`error`'s message for the command line (several lines only when it lists several
  mistakes, one per line)."""
  storage = storage_error(error)
  if storage is not None:
    hint = STORAGE_HINTS.get(storage.errno)
    return f'storage error: {storage}' + (f' ({hint})' if hint else '')
  text = message(error) or type(error).__name__
  if isinstance(error, (ValueError, OSError, RuntimeError, FloatingPointError)):
    return f'error: {text}'
  return f'{type(error).__name__}: {text.splitlines()[0]}'


def _not_a_library_error(record: logging.LogRecord) -> bool:
  return record.levelno < logging.ERROR or record.name.split('.')[0] == 'fat_jax'


class TracebackLog:
  """Tracebacks kept off the terminal, in ``folder/errors.log`` or, where that cannot be
  written (a full disk, a read-only or missing folder), a temporary file. The file is created
  by the first entry; `path` is where the entries went (None before the first)."""

  def __init__(self, folder: str):
    self.folder = folder
    self.path = None
    self._files = [os.path.join(folder, LOG), None]  # to try in turn; None: a temporary file
    self._lock = threading.Lock()

  def write(self, text: str) -> None:
    """Append `text`. Never raises: an entry no file takes is dropped."""
    with self._lock:
      while self._files:
        try:
          if self._files[0] is None:
            fd, self._files[0] = tempfile.mkstemp(prefix='fat_jax_errors_', suffix='.log')
            os.close(fd)
          with open(self._files[0], 'a') as f:
            f.write(text.rstrip('\n') + '\n')
          self.path = self._files[0]
          return
        except OSError:
          self._files.pop(0)

  def write_exception(self, error: BaseException, header: str = '') -> None:
    self.write(header + ''.join(traceback.format_exception(error)))

  def capture(self) -> None:
    """From now on, for the rest of the process, send here: the records at ERROR and above of
    every logger but fat_jax's (not to the handlers already on the root logger), the uncaught
    exceptions of threads and the exceptions Python cannot raise (those of coroutines nobody
    awaits, of callbacks run by C code, of objects being finalised)."""
    root = logging.getLogger()
    for handler in root.handlers:
      handler.addFilter(_not_a_library_error)
    handler = _Handler(self)
    handler.setLevel(logging.ERROR)
    handler.addFilter(lambda record: not _not_a_library_error(record))
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
    root.addHandler(handler)
    sys.unraisablehook = lambda u: self.write_exception(
        u.exc_value, f'{u.err_msg or "Exception ignored in"}: {u.object!r}\n')
    threading.excepthook = lambda a: self.write_exception(
        a.exc_value, f'Exception in thread {a.thread.name if a.thread else "?"}:\n')


class _Handler(logging.Handler):

  def __init__(self, log: TracebackLog):
    super().__init__()
    self.log = log

  def emit(self, record: logging.LogRecord) -> None:
    try:
      self.log.write(self.format(record))
    except Exception:  # pylint: disable=broad-except  # a record that cannot be formatted
      self.handleError(record)
