"""``torch.save`` files written without PyTorch, byte layout as ``torch/serialization.py``.

`save_zip` mirrors ``_save`` (torch ≥ 1.6): a stored (uncompressed) zip with
``<archive>/data.pkl``, ``<archive>/byteorder``, ``<archive>/data/<key>`` per storage
(keys '0', '1', ... in first-use order) and ``<archive>/version``. `save_legacy`
mirrors ``_legacy_save``: pickles of the magic number, protocol version 1001 and
sys_info, the object pickle, the sorted storage keys, then per storage an int64
element count and its raw bytes. In both, a tensor pickles as
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False,
OrderedDict())`` and a storage as the persistent id ``('storage',
torch.<Type>Storage, key, 'cpu', numel)`` (legacy: plus a view entry None), with
pickle protocol 2 (torch's DEFAULT_PROTOCOL).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

_STORAGE_NAMES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.float64): 'DoubleStorage',
                  np.dtype(np.float16): 'HalfStorage', np.dtype(np.int64): 'LongStorage',
                  np.dtype(np.int32): 'IntStorage', np.dtype(np.uint8): 'ByteStorage'}


class TorchGlobal:
  """A global of torch's namespace, pickled by reference (GLOBAL opcode)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires a callable in a reduce tuple
    raise TypeError(f'{self.module}.{self.name} is only a name to pickle')


REBUILD_TENSOR_V2 = TorchGlobal('torch._utils', '_rebuild_tensor_v2')


class Tensor:
  """A tensor over a storage (its own, or `storage` shared with another tensor)."""

  def __init__(self, array: np.ndarray, storage: 'Storage | None' = None, offset: int = 0,
               stride: tuple[int, ...] | None = None):
    self.shape = array.shape
    self.storage = storage or Storage(np.ascontiguousarray(array).reshape(-1))
    self.offset = offset
    # contiguous strides, in elements, as torch's Tensor.stride()
    self.stride = stride if stride is not None else tuple(
        int(np.prod(array.shape[i + 1:])) for i in range(array.ndim))

  def __reduce_ex__(self, protocol):
    return (REBUILD_TENSOR_V2, (self.storage, self.offset, tuple(self.shape), self.stride,
                                False, collections.OrderedDict()))


class Storage:
  """A flat typed storage."""

  def __init__(self, data: np.ndarray):
    self.data = data


class _Pickler(pickle._Pickler):  # the Python pickler: its dispatch table is extensible
  dispatch = dict(pickle._Pickler.dispatch)

  def __init__(self, file, persistent_id):
    super().__init__(file, protocol=2)
    self._pid = persistent_id

  def persistent_id(self, obj):
    return self._pid(obj)

  def save_torch_global(self, obj: TorchGlobal):
    self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())
    self.memoize(obj)

  dispatch[TorchGlobal] = save_torch_global


def _storage_type(storage: Storage) -> TorchGlobal:
  return TorchGlobal('torch', _STORAGE_NAMES[storage.data.dtype])


def _pickle(obj, persistent_id) -> bytes:
  buffer = io.BytesIO()
  _Pickler(buffer, persistent_id).dump(obj)
  return buffer.getvalue()


def state_dict(arrays: dict[str, np.ndarray]) -> collections.OrderedDict:
  """An ``nn.Module.state_dict()``-like OrderedDict of tensors (with ``_metadata``)."""
  out = collections.OrderedDict((k, Tensor(v)) for k, v in arrays.items())
  out._metadata = collections.OrderedDict([('', {'version': 1})])
  return out


def save_zip(obj, path: str, archive: str | None = None) -> str:
  """``torch.save(obj, path)`` (zip format); `archive` defaults to the file's stem as
  torch ≥ 2 names it ('archive' for a buffer)."""
  archive = archive or os.path.splitext(os.path.basename(path))[0]
  keys: dict[int, tuple[str, Storage]] = {}

  def persistent_id(o):
    if isinstance(o, Storage):
      key = keys.setdefault(id(o), (str(len(keys)), o))[0]
      return ('storage', _storage_type(o), key, 'cpu', o.data.size)
    return None

  data = _pickle(obj, persistent_id)
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
    z.writestr(f'{archive}/data.pkl', data)
    z.writestr(f'{archive}/byteorder', 'little')
    for key, storage in sorted(keys.values(), key=lambda ks: ks[0]):
      z.writestr(f'{archive}/data/{key}', storage.data.astype(
          storage.data.dtype.newbyteorder('<')).tobytes())
    z.writestr(f'{archive}/version', '3\n')
  return path


def save_legacy(obj, path: str) -> str:
  """``torch.save(obj, path, _use_new_zipfile_serialization=False)``."""
  keys: dict[int, tuple[str, Storage]] = {}

  def persistent_id(o):
    if isinstance(o, Storage):  # torch: str(storage._cdata), a pointer value
      key = keys.setdefault(id(o), (str(140000000000 + 4096 * len(keys)), o))[0]
      return ('storage', _storage_type(o), key, 'cpu', o.data.size, None)
    return None

  sys_info = dict(protocol_version=1001, little_endian=True,
                  type_sizes=dict(short=2, int=4, long=8))
  with open(path, 'wb') as f:
    for header in (0x1950a86a20f9469cfc6c, 1001, sys_info):
      pickle.dump(header, f, protocol=2)
    f.write(_pickle(obj, persistent_id))
    ordered = sorted(keys.values(), key=lambda ks: ks[0])
    pickle.dump([key for key, _ in ordered], f, protocol=2)
    for _, storage in ordered:
      f.write(struct.pack('<q', storage.data.size))
      f.write(storage.data.astype(storage.data.dtype.newbyteorder('<')).tobytes())
  return path
