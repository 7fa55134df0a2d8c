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
Only the globals a checkpoint needs are resolved; any other class in the file
(an ``argparse.Namespace`` of a wrapped checkpoint, ...) is replaced by an inert
`Opaque` record, so reading never imports or runs code named by the file.
"""
from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001

# torch.<Name>Storage → element dtype (torch/storage.py `_dtype_to_storage_type_map`).
STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'UntypedStorage': np.uint8,
}


class TorchFileError(ValueError):
  """The file is not a readable ``torch.save`` file."""


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


class _StorageType:
  """``torch.<Name>Storage`` as named in the file."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_) -> np.ndarray:
  """``torch._utils._rebuild_tensor(_v2)``: the strided view of `storage`, copied."""
  size, stride = tuple(size), tuple(stride)
  needed = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset
  if needed > storage.size:
    raise TorchFileError(f'a tensor of size {size}, stride {stride} at offset {offset} '
                         f'overruns its storage of {storage.size} elements')
  flat = storage[offset:]
  return np.lib.stride_tricks.as_strided(
      flat, shape=size, strides=tuple(s * storage.itemsize for s in stride)).copy()


def _rebuild_parameter(data, requires_grad=False, hooks=None, *state):
  """``torch._utils._rebuild_parameter(_with_state)``: an ``nn.Parameter`` is its data."""
  del requires_grad, hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  """``torch._tensor._rebuild_from_type_v2``: a tensor subclass is its tensor."""
  del new_type, state
  return func(*args)


_GLOBALS = {
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
    ('collections', 'OrderedDict'): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):
  """Resolves tensors and storages; `load_storage(dtype, key, numel)` gives a storage."""

  def __init__(self, file, load_storage):
    super().__init__(file, encoding='utf-8')
    self._load_storage = load_storage
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    if module == 'torch' and name in STORAGE_DTYPES:
      return _StorageType(name)
    return type(name, (Opaque,), {'__module__': module, '__qualname__': name})

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage' and len(pid) >= 5):
      raise TorchFileError(f'unknown persistent id {pid!r}: not a torch.save file')
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if not isinstance(storage_type, _StorageType):
      raise TorchFileError(f'unknown storage type {storage_type!r} of storage {key}')
    if key not in self._storages:
      self._storages[key] = self._load_storage(storage_type.dtype, key, numel)
    return self._storages[key]


def _from_bytes(data: bytes, dtype: np.dtype, numel: int, byteorder: str, what: str):
  if len(data) != numel * dtype.itemsize:
    raise TorchFileError(f'{what} holds {len(data)} bytes, expected {numel} elements of '
                         f'{dtype} ({numel * dtype.itemsize} bytes): truncated or corrupt file')
  return np.frombuffer(data, dtype.newbyteorder('<' if byteorder == 'little' else '>'))


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.count('/') == 1 and n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise TorchFileError(f'{path} is a zip file without one <name>/data.pkl record: not a '
                           'torch.save file (a TorchScript archive needs torch.jit.load)')
    prefix = pickles[0][:-len('data.pkl')]
    names = set(archive.namelist())
    byteorder = (archive.read(prefix + 'byteorder').decode().strip()
                 if prefix + 'byteorder' in names else 'little')

    def load_storage(dtype, key, numel):
      record = f'{prefix}data/{key}'
      if record not in names:
        raise TorchFileError(f'{path}: missing storage record {record}')
      return _from_bytes(archive.read(record), dtype, numel, byteorder, record)

    with archive.open(pickles[0]) as f:
      return _Unpickler(f, load_storage).load()


def _read_legacy(path: str) -> Any:
  with open(path, 'rb') as f:
    try:
      magic = pickle.load(f)
    except Exception as e:  # any unpickling failure means: not this format
      raise TorchFileError(f'{path} is neither a zip nor a legacy torch.save file: {e}') from e
    if magic != LEGACY_MAGIC_NUMBER:
      raise TorchFileError(f'{path}: invalid magic number {magic!r}; not a torch.save file')
    version = pickle.load(f)
    if version != LEGACY_PROTOCOL_VERSION:
      raise TorchFileError(f'{path}: legacy protocol version {version}, expected '
                           f'{LEGACY_PROTOCOL_VERSION}')
    sys_info = pickle.load(f)
    byteorder = 'little' if sys_info.get('little_endian', True) else 'big'
    # The storages follow the object pickle: a first pass learns their dtypes and sizes,
    # a second one rebuilds the tensors from the storages read in between.
    start, layout = f.tell(), {}

    def placeholder(dtype, key, numel):
      layout[key] = (dtype, numel)
      return np.empty(numel, dtype)

    _Unpickler(f, placeholder).load()
    storages = {}
    for key in pickle.load(f):
      key = str(key)
      if key not in layout:
        raise TorchFileError(f'{path}: storage {key} is listed but not referenced')
      dtype, numel = layout[key]
      (count,) = struct.unpack('<q' if byteorder == 'little' else '>q', f.read(8))
      if count != numel:
        raise TorchFileError(f'{path}: storage {key} has {count} elements, expected {numel}')
      storages[key] = _from_bytes(f.read(numel * dtype.itemsize), dtype, numel, byteorder,
                                  f'storage {key}')
    missing = sorted(set(layout) - set(storages))
    if missing:
      raise TorchFileError(f'{path}: storages {missing} are referenced but not stored')
    f.seek(start)
    return _Unpickler(f, lambda dtype, key, numel: storages[key]).load()


def load(path: str) -> Any:
  """The object ``torch.save`` wrote to `path`, with numpy arrays for tensors."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No file {path}.')
  with open(path, 'rb') as f:
    is_zip = f.read(4) == b'PK\x03\x04'  # torch.serialization._is_zipfile
  return _read_zip(path) if is_zip else _read_legacy(path)
