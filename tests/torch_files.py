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

For hostile files (tests/test_untrusted_files.py): a `Storage` may declare more elements
than it holds, a `Tensor` any size, stride and offset; `zip_records` and `legacy_parts`
give a file's pieces to replace, `write_zip` writes them, `declare_size` changes a zip
record's declared size.
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
  """A flat typed storage; the file declares `numel` elements (default: those of `data`)."""

  def __init__(self, data: np.ndarray, numel: int | None = None):
    self.data = data
    self.numel = data.size if numel is None else numel


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
  return write_zip(path, zip_records(obj, archive or os.path.splitext(os.path.basename(path))[0]))


def zip_records(obj, archive: str = 'archive') -> dict[str, bytes]:
  """The records of the zip file of `obj`, name → bytes, in torch's order."""
  keys: dict[int, tuple[str, Storage]] = {}

  def persistent_id(o):
    if isinstance(o, Storage):
      key = keys.setdefault(id(o), (str(len(keys)), o))[0]
      return ('storage', _storage_type(o), key, 'cpu', o.numel)
    return None

  records = {f'{archive}/data.pkl': _pickle(obj, persistent_id),
             f'{archive}/byteorder': b'little'}
  for key, storage in sorted(keys.values(), key=lambda ks: ks[0]):
    records[f'{archive}/data/{key}'] = storage.data.astype(
        storage.data.dtype.newbyteorder('<')).tobytes()
  records[f'{archive}/version'] = b'3\n'
  return records


def save_legacy(obj, path: str) -> str:
  """``torch.save(obj, path, _use_new_zipfile_serialization=False)``."""
  with open(path, 'wb') as f:
    f.write(b''.join(legacy_parts(obj)))
  return path


def legacy_parts(obj) -> list[bytes]:
  """The legacy file of `obj` in its six parts: the magic-number, protocol, sys_info and
  object pickles, the storage-key pickle, then the storages (counts and bytes)."""
  keys: dict[int, tuple[str, Storage]] = {}

  def persistent_id(o):
    if isinstance(o, Storage):  # torch: str(storage._cdata), a pointer value
      key = keys.setdefault(id(o), (str(140000000000 + 4096 * len(keys)), o))[0]
      return ('storage', _storage_type(o), key, 'cpu', o.numel, None)
    return None

  sys_info = dict(protocol_version=1001, little_endian=True,
                  type_sizes=dict(short=2, int=4, long=8))
  headers = [pickle.dumps(h, protocol=2) for h in (0x1950a86a20f9469cfc6c, 1001, sys_info)]
  data = _pickle(obj, persistent_id)
  ordered = sorted(keys.values(), key=lambda ks: ks[0])
  storages = b''.join(struct.pack('<q', s.numel) + s.data.astype(
      s.data.dtype.newbyteorder('<')).tobytes() for _, s in ordered)
  return [*headers, data, pickle.dumps([key for key, _ in ordered], protocol=2), storages]


def write_zip(path: str, records: dict[str, bytes], deflate: bool = False) -> str:
  """A zip archive of `records` (name → bytes), stored or deflated."""
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
    for name, data in records.items():
      z.writestr(name, data)
  return path


def declare_size(path: str, record: str, size: int) -> None:
  """Rewrites the uncompressed size that the zip's central directory declares for `record`
  (what ``ZipInfo.file_size`` reads), leaving its data as it is."""
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  at = 0
  while True:  # central directory entries: signature, ..., uncompressed size at 24, name at 46
    at = data.index(b'PK\x01\x02', at)
    (name_length,) = struct.unpack('<H', data[at + 28:at + 30])
    if data[at + 46:at + 46 + name_length] == record.encode():
      data[at + 24:at + 28] = struct.pack('<I', size)
      break
    at += 46
  with open(path, 'wb') as f:
    f.write(data)
