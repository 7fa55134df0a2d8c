"""The one unpickler for files from outside: a pickle runs no code it names.

Every pickle fat_jax reads (``torch.save`` files, CIFAR python batches) goes through `load`,
which takes a `Format`: the exact globals that kind of pickle may name, each resolved to an
object of fat_jax (never imported from the name), and the types whose state a BUILD may set.
Any other global, a BUILD on any other object, a persistent id without a loader, or a read
past the end of the stream stops the load with one `PickleError` line naming it. The
unpickler is Python's own (``pickle._Unpickler``), so each of these checks runs before the
step it guards; REDUCE, NEWOBJ, INST and OBJ can only call what the format resolved.

`PLAIN` allows no global at all (ints, strings, bytes, lists, tuples, dicts, sets);
`NUMPY_ARRAYS` adds the numeric numpy arrays that ``ndarray.__reduce__`` writes.
"""
from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np


class PickleError(ValueError):
  """The pickle is malformed, or names a global or a step its format does not allow."""


@dataclasses.dataclass(frozen=True)
class Format:
  """What one kind of pickle may hold.

  name: the pickle in messages; allowed: ``(module, name)`` → the object that global
  resolves to; builds: a type → ``set_state(instance, state)``, run by BUILD on an instance
  of it; fallback: for any other global, ``fallback(module, name)`` (an inert stand-in that
  resolves nothing), or None to refuse it; errors: the exceptions these objects raise for
  bad input, which `load` raises unchanged.
  """
  name: str
  allowed: Mapping[tuple[str, str], Any] = dataclasses.field(default_factory=dict)
  builds: Mapping[type, Callable[[Any, Any], None]] = dataclasses.field(default_factory=dict)
  fallback: Callable[[str, str], Any] | None = None
  errors: tuple[type[Exception], ...] = ()


PLAIN = Format('plain-value pickle')


class _Bounded:
  """The next `size` bytes of `file`: a length read from the pickle cannot make the reader
  allocate more than the stream holds."""

  def __init__(self, file: BinaryIO, size: int):
    self._file, self._left = file, size

  def read(self, n: int) -> bytes:
    if n > self._left:
      raise PickleError(f'the pickle asks for {n} bytes where {self._left} are left: truncated'
                        ' or corrupt')
    data = self._file.read(n)
    self._left -= len(data)
    return data

  def readline(self) -> bytes:
    line = self._file.readline(self._left)
    self._left -= len(line)
    return line


class _Opcodes(dict):
  def __missing__(self, code: int):
    raise PickleError(f'invalid opcode {bytes([code])!r}: not a pickle, or a corrupt one')


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  dispatch = _Opcodes(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file, size, fmt: Format, persistent_load, encoding):
    super().__init__(_Bounded(file, size), encoding=encoding)
    self._format, self._persistent_load = fmt, persistent_load

  def find_class(self, module, name):
    if (module, name) in self._format.allowed:
      return self._format.allowed[(module, name)]
    if self._format.fallback is not None:
      return self._format.fallback(module, name)
    raise PickleError(f'refused global {module}.{name}: a {self._format.name} may name '
                      f'{_names(self._format.allowed)}')

  def persistent_load(self, pid):
    if self._persistent_load is None:
      raise PickleError(f'refused persistent id {repr(pid)[:80]}: a {self._format.name} holds '
                        'none')
    return self._persistent_load(pid)

  def load_build(self):
    state, instance = self.stack.pop(), self.stack[-1]
    for kind, set_state in self._format.builds.items():
      if isinstance(instance, kind):
        set_state(instance, state)
        return
    raise PickleError(f'refused BUILD on a {type(instance).__qualname__}: a {self._format.name}'
                      ' sets the state of no such object')

  dispatch[pickle.BUILD[0]] = load_build


def _refuse(opcode: str, why: str):
  def refuse(unpickler):
    raise PickleError(f'refused opcode {opcode}: {why}')
  return refuse


_Unpickler.dispatch[pickle.BYTEARRAY8[0]] = _refuse(
    'BYTEARRAY8', 'it allocates the length it declares before reading')
_Unpickler.dispatch.update({
    getattr(pickle, ext)[0]: _refuse(ext, "it reads copyreg's process-wide extension registry")
    for ext in ('EXT1', 'EXT2', 'EXT4')})


def _names(allowed) -> str:
  return ', '.join(f'{m}.{n}' for m, n in allowed) if allowed else 'no global'


def load(file: BinaryIO, size: int, fmt: Format, *,
         persistent_load: Callable[[Any], Any] | None = None, encoding: str = 'ASCII') -> Any:
  """The object pickled at the position of `file`, within its next `size` bytes, read as
  `fmt` allows. `persistent_load(pid)` resolves persistent ids; `encoding` decodes Python 2
  strings ('bytes' keeps them bytes). Raises `PickleError` (a ValueError) for a refused
  global, BUILD or persistent id and for a truncated or malformed pickle, and the
  `Format.errors` of the format's own objects unchanged."""
  try:
    return _Unpickler(file, size, fmt, persistent_load, encoding).load()
  except (PickleError, *fmt.errors):
    raise
  except Exception as e:  # EOFError, UnpicklingError, a TypeError of a bad REDUCE, ...
    raise PickleError(f'malformed {fmt.name}: {type(e).__name__}: {e}') from None


# --------------------------------------------------- numpy arrays (ndarray.__reduce__)


class _NdarrayName:
  """``numpy.ndarray`` as a pickle names it: only `_reconstruct`'s first argument."""


_NDARRAY = _NdarrayName()
_NUMERIC_KINDS = 'biuf'  # bool, signed, unsigned, float: no object, void or string data


def _text(value) -> str:
  return value.decode('ascii') if isinstance(value, bytes) else value


def _reconstruct(subtype, shape, dtype_code):
  """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``: the empty array that a
  BUILD then fills."""
  del dtype_code
  if subtype is not _NDARRAY or tuple(shape) != (0,):
    raise PickleError(f'refused _reconstruct({subtype!r}, {shape!r}): numpy pickles '
                      '_reconstruct(ndarray, (0,), ...)')
  return np.ndarray((0,), np.uint8)


def _dtype(code, align=False, copy=True) -> np.dtype:
  """``numpy.dtype(code, align, copy)`` of a numeric type, always a new object (the BUILD
  that follows sets its byte order)."""
  del align, copy
  dtype = np.dtype(_text(code), copy=True) if isinstance(code, (str, bytes)) else None
  if dtype is None or dtype.kind not in _NUMERIC_KINDS or dtype.fields or dtype.subdtype:
    raise PickleError(f'refused numpy dtype {code!r}: only numeric arrays are read')
  return dtype


def _set_dtype_state(dtype: np.dtype, state) -> None:
  """The state ``dtype.__reduce__`` writes for a numeric type: (3, byte order, None, None,
  None, -1, -1, 0)."""
  if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and
          _text(state[1]) in ('<', '>', '|', '=') and state[2:] == (None, None, None, -1, -1, 0)):
    raise PickleError(f'refused dtype state {state!r}: not a numeric dtype')
  dtype.__setstate__((3, _text(state[1]), *state[2:]))


def _set_array_state(array: np.ndarray, state) -> None:
  """The state ``ndarray.__reduce__`` writes: (1, shape, dtype, Fortran order, raw bytes),
  whose length must be the shape's."""
  if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
    raise PickleError(f'refused array state of type {type(state).__name__}: expected '
                      '(1, shape, dtype, is_fortran, data)')
  _, shape, dtype, fortran, data = state
  if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape) and
          len(shape) <= 32 and isinstance(dtype, np.dtype) and dtype.kind in _NUMERIC_KINDS
          and isinstance(fortran, (bool, int)) and isinstance(data, bytes)):
    raise PickleError(f'refused array state: shape {shape!r}, dtype {dtype!r}: expected a '
                      'numeric array and its bytes')
  if len(data) != math.prod(shape) * dtype.itemsize:
    raise PickleError(f'an array of shape {shape} and dtype {dtype} holds {len(data)} bytes, '
                      f'expected {math.prod(shape) * dtype.itemsize}: truncated or corrupt')
  array.__setstate__((1, shape, dtype, bool(fortran), data))


def _latin1(text, encoding) -> bytes:
  """``_codecs.encode(text, 'latin1')``: how Python 3 pickles bytes at protocols 0 to 2."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise PickleError(f'refused _codecs.encode(..., {encoding!r}): only latin1 text is read')
  return text.encode('latin1')


NUMPY_ARRAYS = Format(
    'pickle of numpy arrays',
    allowed={('numpy.core.multiarray', '_reconstruct'): _reconstruct,  # numpy 1
             ('numpy._core.multiarray', '_reconstruct'): _reconstruct,  # numpy 2
             ('numpy', 'ndarray'): _NDARRAY, ('numpy', 'dtype'): _dtype,
             ('_codecs', 'encode'): _latin1},
    builds={np.ndarray: _set_array_state, np.dtype: _set_dtype_state})
