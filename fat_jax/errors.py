"""The command line's account of an error: one line, not a traceback.

A storage failure (disk full, read-only or missing directory) often surfaces wrapped in
several layers of library exceptions; `one_line` reports the `OSError` (one with an errno)
at their root instead.
"""
from __future__ import annotations


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def one_line(error: BaseException) -> str:
  """`error`'s message for the command line (several lines only when it lists several
  mistakes, one per line)."""
  storage = next((e for e in _chain(error) if isinstance(e, OSError) and e.errno), None)
  if storage is not None:
    return f'storage error: {storage}'
  text = str(error).strip() or type(error).__name__
  if isinstance(error, (ValueError, OSError, RuntimeError, FloatingPointError)):
    return f'error: {text}'
  return f'{type(error).__name__}: {text.splitlines()[0]}'
