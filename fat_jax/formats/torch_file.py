"""Read ``torch.save`` files with the standard library and numpy (no PyTorch).

Both formats of ``torch/serialization.py`` are read:

* the zip format (``_save``, torch ≥ 1.6): a zip archive ``<name>/data.pkl`` (the
  pickled object), ``<name>/byteorder`` and one raw record ``<name>/data/<key>``
  per storage; ``<name>`` is ``archive`` or the saved file's stem;
* the legacy format (``_legacy_save``): pickles of the magic number, the
  protocol version and a sys-info dict, then the pickled object, then the
  pickled list of storage keys, then for each key an 8-byte little-endian
  element count followed by the storage's raw bytes.

In the object pickle a tensor is ``torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, requires_grad, hooks[, metadata])`` and a storage a
persistent id ``('storage', torch.<Type>Storage, key, location, numel[, view])``.
Tensors come back as numpy arrays (``as_strided`` views of the storage, copied).

Every pickle goes through `fat_jax.formats.restricted_pickle`: the legacy header pickles (magic
number, protocol, sys_info, storage keys) may name no global; the object pickle resolves
the tensor and storage rebuilders, ``collections.OrderedDict`` and the builtin containers
to fat_jax's own objects, refuses the globals of `REFUSED_MODULES` (os, subprocess,
builtins, ...) and replaces any other class (an ``argparse.Namespace`` of a wrapped
checkpoint, ...) by an inert `Opaque` record, so reading never imports or runs code named
by the file. Before anything is allocated, sizes, strides and offsets are checked (ints
>= 0, every element of a view inside its storage), a storage's element count against the
bytes its record or the rest of the file holds, and both against `Limits`.
"""
from __future__ import annotations

import builtins
import collections
import dataclasses
import math
import os
import struct
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np

from fat_jax.formats import restricted_pickle

LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001
# One tensor or storage holds at most as many elements as a whole WideResNet-70-16 (266.8 M
# parameters); its largest tensor, a 1024x1024x3x3 conv, has 9.4 M.
MAX_ELEMENTS = 2**28
# All bytes read and rebuilt (object pickle, storages, tensor copies): 8 GiB, room for a
# WideResNet-70-16 float32 state_dict with one optimiser buffer, read and copied (4.3 GB).
MAX_TOTAL_BYTES = 2**33

# torch.<Name>Storage → element dtype (torch/storage.py `_dtype_to_storage_type_map`).
STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'UntypedStorage': np.uint8,
}
# Modules whose globals run commands or code, or open files: refused in the object pickle
# rather than replaced by an `Opaque` stand-in, so that a file naming one fails loudly.
REFUSED_MODULES = frozenset({
    'builtins', '__builtin__', 'os', 'posix', 'nt', 'subprocess', 'sys', 'importlib', 'runpy',
    'shutil', 'socket', 'pickle', '_pickle', 'marshal', 'types', 'ctypes', 'code', 'codeop',
    'pty', 'operator', 'functools', 'io', '_io', 'pathlib', 'tempfile', 'multiprocessing',
    'threading', '_thread', 'asyncio', 'signal', 'inspect', 'pdb', 'timeit', 'webbrowser',
    'shelve', 'commands', 'popen2'})


class TorchFileError(ValueError):
  """The file is not a readable ``torch.save`` file, or exceeds the `Limits`."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """The largest sizes `load` accepts, checked before anything is allocated.

  max_elements: elements of one tensor or one storage; max_total_bytes: the object pickle,
  the storages and the rebuilt tensors together, in bytes.
  """
  max_elements: int = MAX_ELEMENTS
  max_total_bytes: int = MAX_TOTAL_BYTES


class Opaque:
  """Stand-in for a class of the file that a state_dict does not need: it keeps what the
  pickle gives it (constructor arguments, state, dict or list items) and runs nothing."""

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state):
    self.__dict__['state'] = state

  def __setitem__(self, key, value):  # a dict subclass's items (SETITEMS)
    self.__dict__.setdefault('items', {})[key] = value

  def append(self, value):  # a list subclass's items (APPENDS)
    self.__dict__.setdefault('list', []).append(value)

  def extend(self, values):
    self.__dict__.setdefault('list', []).extend(values)

  def __repr__(self):
    return f'<opaque {type(self).__module__}.{type(self).__qualname__}>'


def _opaque_class(module: str, name: str) -> type:
  if module.split('.')[0] in REFUSED_MODULES:
    raise TorchFileError(f'refused global {module}.{name}: a torch.save file names no code')
  return type(name, (Opaque,), {'__module__': module, '__qualname__': name})


def _set_attributes(obj, state) -> None:
  """BUILD of an OrderedDict: its attributes (a state_dict's ``_metadata``), none that
  shadows a method or a dunder."""
  if not (isinstance(state, dict) and all(
      isinstance(k, str) and not k.startswith('__') and not hasattr(type(obj), k)
      for k in state)):
    raise TorchFileError(f'refused state {_short(state)} of an OrderedDict')
  obj.__dict__.update(state)


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + '...'


class _StorageType:
  """``torch.<Name>Storage`` as named in the file."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Declared:
  """A storage known by its dtype and element count only (the legacy format's first pass)."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.size = dtype, numel


def _rebuild_parameter(data, requires_grad=False, hooks=None, *state):
  """``torch._utils._rebuild_parameter(_with_state)``: an ``nn.Parameter`` is its data."""
  del requires_grad, hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  """``torch._tensor._rebuild_from_type_v2``: a tensor subclass is its tensor."""
  del new_type, state
  return func(*args)


def _dims(values, what: str) -> tuple[int, ...]:
  if not (isinstance(values, (tuple, list)) and len(values) <= 64 and
          all(type(v) is int for v in values)):
    raise TorchFileError(f'a tensor {what} {_short(values)} is not a tuple of ints')
  return tuple(values)


class _Budget:
  """The bytes one load has read and rebuilt, against `Limits.max_total_bytes`."""

  def __init__(self, limits: Limits):
    self.limits, self.used = limits, 0

  def take(self, nbytes: int, what: str) -> None:
    if self.used + nbytes > self.limits.max_total_bytes:
      raise TorchFileError(
          f'{what} ({nbytes} bytes) takes the file past max_total_bytes='
          f'{self.limits.max_total_bytes} ({self.used} bytes read before): raise the limit '
          'only for a file you trust')
    self.used += nbytes

  def elements(self, numel: int, what: str) -> None:
    if numel > self.limits.max_elements:
      raise TorchFileError(f'{what} declares {numel} elements, above max_elements='
                           f'{self.limits.max_elements}: raise the limit only for a file you '
                           'trust')


class _ObjectPickle:
  """The object pickle of one file: storages from `read_storage(dtype, key, numel)`,
  tensors rebuilt as copies of their strided views, all within `budget`. With
  ``copy=False`` tensors are checked and not rebuilt (the storages are `_Declared`)."""

  def __init__(self, read_storage, budget: _Budget, copy: bool = True):
    self._read_storage, self._budget, self._copy = read_storage, budget, copy
    self._storages: dict[str, Any] = {}
    self.format = restricted_pickle.Format(
        'torch object pickle',
        allowed={('torch._utils', '_rebuild_tensor'): self._rebuild_tensor,
                 ('torch._utils', '_rebuild_tensor_v2'): self._rebuild_tensor,
                 ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
                 ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
                 ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
                 ('collections', 'OrderedDict'): collections.OrderedDict,
                 **{(m, n): getattr(builtins, n) for m in ('builtins', '__builtin__')
                    for n in ('dict', 'list', 'tuple', 'set', 'frozenset')},
                 **{('torch', name): _StorageType(name) for name in STORAGE_DTYPES}},
        builds={Opaque: Opaque.__setstate__, collections.OrderedDict: _set_attributes},
        fallback=_opaque_class, errors=(TorchFileError,))

  def load(self, file, size: int) -> Any:
    return restricted_pickle.load(file, size, self.format, persistent_load=self._storage,
                                  encoding='utf-8')

  def _storage(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'):
      raise TorchFileError(f'unknown persistent id {_short(pid)}: not a torch.save file')
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    if not isinstance(storage_type, _StorageType):
      raise TorchFileError(f'unknown storage type {_short(storage_type)} of storage {key}')
    if type(numel) is not int or numel < 0:
      raise TorchFileError(f'storage {key} declares {_short(numel)} elements')
    if key not in self._storages:
      self._budget.elements(numel, f'storage {key}')
      self._storages[key] = self._read_storage(storage_type.dtype, key, numel)
    return self._storages[key]

  def _rebuild_tensor(self, storage, offset, size, stride, *_):
    """``torch._utils._rebuild_tensor(_v2)``: the strided view of `storage`, copied, after
    checking that every element it reads lies in the storage."""
    size, stride = _dims(size, 'size'), _dims(stride, 'stride')
    if not isinstance(storage, (np.ndarray, _Declared)):
      raise TorchFileError(f'a tensor over {_short(storage)}, not a storage')
    if type(offset) is not int or offset < 0 or len(size) != len(stride) or min(
        (*size, *stride), default=0) < 0:
      raise TorchFileError(f'a tensor of size {size}, stride {stride} at offset {offset}: '
                           'sizes, strides and offset must be ints >= 0, one stride per size')
    numel = math.prod(size)
    self._budget.elements(numel, f'a tensor of size {size}')
    end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride)) if numel else offset
    if end > storage.size:
      raise TorchFileError(f'a tensor of size {size}, stride {stride} at offset {offset} '
                           f'overruns its storage of {storage.size} elements')
    self._budget.take(numel * storage.dtype.itemsize, f'a tensor of size {size}')
    if not self._copy:
      return None
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size,
        strides=tuple(s * storage.itemsize for s in stride)).copy()


def _from_bytes(data: bytes, dtype: np.dtype, numel: int, byteorder: str, what: str):
  if len(data) != numel * dtype.itemsize:
    raise TorchFileError(f'{what} holds {len(data)} bytes, expected {numel} elements of '
                         f'{dtype} ({numel * dtype.itemsize} bytes): truncated or corrupt file')
  return np.frombuffer(data, dtype.newbyteorder('<' if byteorder == 'little' else '>'))


# A truncated or corrupt archive, or a record compressed in a way zipfile cannot read.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


def _read_zip(path: str, limits: Limits) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.count('/') == 1 and n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise TorchFileError('a zip file without one <name>/data.pkl record: not a '
                           'torch.save file (a TorchScript archive needs torch.jit.load)')
    prefix = pickles[0][:-len('data.pkl')]
    names = set(archive.namelist())
    byteorder = 'little'
    if prefix + 'byteorder' in names:
      with archive.open(prefix + 'byteorder') as f:
        byteorder = f.read(16).decode('ascii', 'replace').strip()
    budget = _Budget(limits)

    def read_storage(dtype, key, numel):
      record = f'{prefix}data/{key}'
      if record not in names:
        raise TorchFileError(f'missing storage record {record}')
      declared = archive.getinfo(record).file_size  # before reading: a deflated record
      if declared != numel * dtype.itemsize:      # may declare any size
        raise TorchFileError(f'{record} holds {declared} bytes, expected {numel} elements of '
                             f'{dtype} ({numel * dtype.itemsize} bytes): truncated or corrupt '
                             'file')
      budget.take(declared, f'storage record {record}')
      try:
        data = archive.read(record)
      except _ZIP_ERRORS as e:
        raise TorchFileError(f'{record} is unreadable ({e}): truncated or corrupt file') from None
      return _from_bytes(data, dtype, numel, byteorder, record)

    size = archive.getinfo(pickles[0]).file_size
    budget.take(size, f'the object pickle {pickles[0]}')
    with archive.open(pickles[0]) as f:
      return _ObjectPickle(read_storage, budget).load(f, size)


def _read_legacy(path: str, limits: Limits) -> Any:
  with open(path, 'rb') as f:
    file_size = os.fstat(f.fileno()).st_size

    def header(what: str):
      try:
        return restricted_pickle.load(f, file_size - f.tell(), restricted_pickle.PLAIN)
      except restricted_pickle.PickleError as e:
        raise TorchFileError(f'the {what} pickle: {e}') from None

    try:
      magic = restricted_pickle.load(f, file_size, restricted_pickle.PLAIN)
    except restricted_pickle.PickleError as e:  # any failure of the first means: not this format
      raise TorchFileError(f'neither a zip nor a legacy torch.save file: {e}') from None
    if magic != LEGACY_MAGIC_NUMBER:
      raise TorchFileError(f'invalid magic number {_short(magic)}; not a torch.save file')
    version = header('protocol version')
    if version != LEGACY_PROTOCOL_VERSION:
      raise TorchFileError(f'legacy protocol version {_short(version)}, expected '
                           f'{LEGACY_PROTOCOL_VERSION}')
    sys_info = header('sys_info')
    if not isinstance(sys_info, dict):
      raise TorchFileError(f'sys_info {_short(sys_info)} is not a dict')
    byteorder = 'little' if sys_info.get('little_endian', True) else 'big'
    # The storages follow the object pickle: a first pass learns their dtypes and sizes and
    # checks every tensor and the total without allocating, a second one rebuilds the
    # tensors from the storages read in between.
    start, layout, declared = f.tell(), {}, _Budget(limits)

    def declare(dtype, key, numel):
      declared.take(numel * dtype.itemsize, f'storage {key}')
      layout[key] = (dtype, numel)
      return _Declared(dtype, numel)

    _ObjectPickle(declare, declared, copy=False).load(f, file_size - start)
    keys = header('storage key list')
    if not (isinstance(keys, list) and all(isinstance(k, (str, int)) for k in keys)):
      raise TorchFileError(f'the storage key list {_short(keys)} is not a list of keys')
    budget = _Budget(limits)
    storages = {}
    for key in map(str, keys):
      if key not in layout:
        raise TorchFileError(f'storage {key} is listed but not referenced')
      dtype, numel = layout[key]
      head = f.read(8)
      if len(head) < 8:
        raise TorchFileError(f'the file ends before the element count of storage {key}: '
                             'truncated file')
      (count,) = struct.unpack('<q' if byteorder == 'little' else '>q', head)
      if count != numel:
        raise TorchFileError(f'storage {key} has {count} elements, expected {numel}')
      nbytes, left = numel * dtype.itemsize, file_size - f.tell()
      if nbytes > left:  # before reading
        raise TorchFileError(f'storage {key} declares {numel} elements of {dtype} ({nbytes} '
                             f'bytes) where {left} bytes are left: truncated or corrupt file')
      budget.take(nbytes, f'storage {key}')
      storages[key] = _from_bytes(f.read(nbytes), dtype, numel, byteorder, f'storage {key}')
    missing = sorted(set(layout) - set(storages))
    if missing:
      raise TorchFileError(f'storages {missing} are referenced but not stored')
    f.seek(start)
    return _ObjectPickle(lambda dtype, key, numel: storages[key], budget).load(
        f, file_size - start)


def load(path: str, limits: Limits = Limits()) -> Any:
  """The object ``torch.save`` wrote to `path`, with numpy arrays for tensors.

  Raises TorchFileError (one line naming `path`) for a file that is not a readable
  ``torch.save`` file, names a global outside the tensor rebuilders, or exceeds `limits`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No file {path}.')
  with open(path, 'rb') as f:
    is_zip = f.read(4) == b'PK\x03\x04'  # torch.serialization._is_zipfile
  try:
    return _read_zip(path, limits) if is_zip else _read_legacy(path, limits)
  except (TorchFileError, restricted_pickle.PickleError) as e:
    raise TorchFileError(f'{path}: {e}') from None
  except _ZIP_ERRORS as e:
    raise TorchFileError(f'{path}: not a readable zip archive ({e}): truncated or corrupt '
                         'file') from None
