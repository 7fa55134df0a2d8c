"""Image-classification data sets as in-memory uint8 arrays.

`load_dataset` reads a data set from one of two sources:

* ``dir``: the original distribution files in a local folder (CIFAR python
  pickles, MNIST/Fashion-MNIST IDX files, SVHN ``*_32x32.mat``);
* ``tfds``: TensorFlow Datasets through `tfds.data_source` (array_record
  files), imported only here (``pip install 'fat_jax[tfds]'``). Reading
  prepared data needs no TensorFlow; downloading and preparing it does
  (``pip install tensorflow-cpu``).

``auto`` picks ``dir`` when a folder is given (or Fashion-MNIST's Debian
package is installed), else a locally prepared TFDS copy, else fails with a
`DatasetNotFoundError` saying how to get the data. Subsets are the first
``n_train``/``n_test`` examples of each split, in file order.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import types
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fat_jax.formats import restricted_pickle

FASHION_MNIST_DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'

Arrays = tuple[np.ndarray, np.ndarray]  # images uint8 (N, H, W, C), labels int32 (N,)
Splits = tuple[Arrays, Arrays]  # (train, test)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a data set."""
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C)
  mean: tuple[float, ...]  # per channel, pixel units [0, 1]; () = no normalisation
  std: tuple[float, ...]
  augment: str  # 'crop_flip', 'crop' or 'none'


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Train and test splits as host arrays: uint8 (N, H, W, C) images, int32 labels."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  info: DatasetInfo

  @property
  def num_train(self) -> int:
    return len(self.train_labels)

  def test_subset(self, n: int) -> Arrays:
    """The first `n` test examples (0 = all)."""
    n = n or len(self.test_labels)
    return self.test_images[:n], self.test_labels[:n]

  test_batches = test_subset   # in memory already: what a streamed set decodes per batch


class DatasetNotFoundError(FileNotFoundError):
  """The data set is not available locally; the message says how to get it."""


# ---------------------------------------------------------------- file formats


def _locate(root: str, files: Sequence[str], subdir: str | None = None) -> str:
  """Returns ``root/subdir`` or else ``root``, whichever holds all ``files``."""
  folders = [os.path.join(root, subdir), root] if subdir else [root]
  for folder in folders:
    if all(os.path.isfile(os.path.join(folder, f)) for f in files):
      return folder
  raise DatasetNotFoundError(f'no {", ".join(files)} in {" or ".join(folders)}')


def _read_cifar_batch(path: str, label_key: bytes) -> Arrays:
  """Reads one pickled CIFAR batch (rows are CHW-ordered 32x32x3 images) with the restricted
  unpickler: plain values and numeric numpy arrays, nothing else."""
  with open(path, 'rb') as f:
    try:
      batch = restricted_pickle.load(f, os.fstat(f.fileno()).st_size,
                                     restricted_pickle.NUMPY_ARRAYS, encoding='bytes')
    except restricted_pickle.PickleError as e:
      raise ValueError(f'{path}: {e}') from None
  data = batch.get(b'data') if isinstance(batch, dict) else None
  labels = batch.get(label_key) if isinstance(batch, dict) else None
  if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or
      data.shape[1] != 3 * 32 * 32 or not isinstance(labels, list) or
      not all(type(y) is int and -2**31 <= y < 2**31 for y in labels)):
    raise ValueError(f'{path}: not a CIFAR python batch: expected a dict with {b"data"!r} '
                     f'(uint8, N x 3072) and {label_key!r} (a list of int32 values)')
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), np.asarray(labels, np.int32)


def _concat(parts: Sequence[Arrays]) -> Arrays:
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]))


def _read_cifar(root: str, subdir: str, train_files: Sequence[str],
                test_file: str, label_key: bytes) -> Splits:
  folder = _locate(root, [*train_files, test_file], subdir)
  train = _concat([_read_cifar_batch(os.path.join(folder, f), label_key)
                   for f in train_files])
  return train, _read_cifar_batch(os.path.join(folder, test_file), label_key)


def _read_cifar10_dir(root: str) -> Splits:
  """CIFAR-10 python version: ``root[/cifar-10-batches-py]/data_batch_{1..5}``, ``test_batch``."""
  train_files = [f'data_batch_{i}' for i in range(1, 6)]
  return _read_cifar(root, 'cifar-10-batches-py', train_files, 'test_batch',
                     b'labels')


def _read_cifar100_dir(root: str) -> Splits:
  """CIFAR-100 python version: ``root[/cifar-100-python]/train``, ``test`` (fine labels)."""
  return _read_cifar(root, 'cifar-100-python', ['train'], 'test',
                     b'fine_labels')


def _parse_idx(data: bytes, ndim: int, what: str) -> np.ndarray:
  """Parses an unsigned-byte IDX array of ``ndim`` dimensions (big-endian header)."""
  if len(data) < 4 or data[:3] != b'\x00\x00\x08' or data[3] != ndim:
    raise ValueError(
        f'{what}: bad IDX magic {data[:4].hex()!r}, expected '
        f'{0x800 + ndim:08x} (uint8, {ndim} dims); corrupt or wrong file')
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f'{what}: truncated IDX header')
  dims = struct.unpack(f'>{ndim}I', data[4:header])
  size = int(np.prod(dims))
  if len(data) - header != size:
    raise ValueError(
        f'{what}: IDX header {dims} needs {size} data bytes, found '
        f'{len(data) - header}; truncated or corrupt file')
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_idx_file(path: str, ndim: int) -> np.ndarray:
  """Reads an IDX file, gunzipping ``*.gz``."""
  try:
    if path.endswith('.gz'):
      with gzip.open(path, 'rb') as f:
        data = f.read()
    else:
      with open(path, 'rb') as f:
        data = f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(f'{path}: corrupt gzip file ({e})') from e
  return _parse_idx(data, ndim, path)


def _idx_path(root: str, stem: str) -> str | None:
  for path in (os.path.join(root, stem), os.path.join(root, stem + '.gz')):
    if os.path.isfile(path):
      return path
  return None


def _read_idx_dir(root: str) -> Splits:
  """MNIST-format IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``root``."""
  stems = [f'{split}-{kind}-ubyte' for split in ('train', 't10k')
           for kind in ('images-idx3', 'labels-idx1')]
  paths = {stem: _idx_path(root, stem) for stem in stems}
  missing = [stem for stem, path in paths.items() if path is None]
  if missing:
    raise DatasetNotFoundError(f'no {", ".join(missing)}[.gz] in {root}')

  def split(prefix: str) -> Arrays:
    images = _read_idx_file(paths[f'{prefix}-images-idx3-ubyte'], 3)
    labels = _read_idx_file(paths[f'{prefix}-labels-idx1-ubyte'], 1)
    return images[..., None], labels.astype(np.int32)

  return split('train'), split('t10k')


def _read_svhn_mat(path: str) -> Arrays:
  """Reads an SVHN ``*_32x32.mat``: X (32, 32, 3, N), y (N, 1) with 10 for digit 0."""
  try:
    from scipy import io as scipy_io  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('reading SVHN .mat files needs scipy: pip install scipy') from e
  mat = scipy_io.loadmat(path)
  images = np.ascontiguousarray(np.transpose(mat['X'], (3, 0, 1, 2)), np.uint8)
  labels = np.asarray(mat['y']).reshape(-1).astype(np.int32)
  return images, np.where(labels == 10, 0, labels)


def _read_svhn_dir(root: str) -> Splits:
  """SVHN cropped digits: ``root/train_32x32.mat``, ``root/test_32x32.mat``."""
  folder = _locate(root, ['train_32x32.mat', 'test_32x32.mat'])
  return (_read_svhn_mat(os.path.join(folder, 'train_32x32.mat')),
          _read_svhn_mat(os.path.join(folder, 'test_32x32.mat')))


# ------------------------------------------------------------------------ TFDS


def _import_tfds() -> Any:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("data.source=tfds needs TensorFlow Datasets: pip install 'fat_jax[tfds]'"
                      ) from e
  return tfds


def _tfds_split(tfds_name: str, split: str, download: bool) -> Arrays:
  """Reads one TFDS split with `tfds.data_source` (no TensorFlow needed to read)."""
  tfds = _import_tfds()
  try:
    source = tfds.data_source(tfds_name, split=split, download=download)
  except ModuleNotFoundError as e:
    raise ImportError(
        f'preparing {tfds_name} with TFDS failed: no module {e.name!r}. '
        'Preparing needs TensorFlow (pip install tensorflow-cpu) besides TFDS '
        "and its dependencies; reading a prepared array_record copy doesn't. "
        'Or use the original files with --config.data.dir=PATH.') from e
  examples = list(source)
  return (np.stack([np.asarray(ex['image'], np.uint8) for ex in examples]),
          np.asarray([ex['label'] for ex in examples], np.int32))


def _tfds_split_arg(split: str, n: int) -> str:
  return f'{split}[:{n}]' if n else split


def _read_tfds(tfds_name: str, n_train: int, n_test: int,
              download: bool) -> Splits:
  """Reads the train and test splits (only their first n examples if n > 0)."""
  return (_tfds_split(tfds_name, _tfds_split_arg('train', n_train), download),
          _tfds_split(tfds_name, _tfds_split_arg('test', n_test), download))


def _tfds_prepared(tfds_name: str) -> bool:
  """Whether TFDS has ``tfds_name`` prepared in its local data dir."""
  try:
    tfds = _import_tfds()
  except ImportError:
    return False
  return tfds.builder(tfds_name).is_prepared()


# -------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class _Source:
  info: DatasetInfo
  tfds_name: str
  read_dir: Callable[[str], Splits]
  how_to_get: str
  default_dir: str | None = None


_TFDS_HINT = ("or run online with --config.data.source=tfds (pip install 'fat_jax[tfds]'; "
              'downloading and preparing also needs pip install tensorflow-cpu)')
_IDX_FILES = ('train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
              't10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz')

_SOURCES = {
    'cifar10': _Source(
        DatasetInfo('cifar10', 10, (32, 32, 3), (0.4914, 0.4822, 0.4465),
                    (0.2471, 0.2435, 0.2616), 'crop_flip'),
        'cifar10', _read_cifar10_dir,
        'download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and '
        'extract it, then pass --config.data.dir=PATH (the folder holding '
        f'cifar-10-batches-py), {_TFDS_HINT}'),
    'cifar100': _Source(
        DatasetInfo('cifar100', 100, (32, 32, 3), (0.5071, 0.4865, 0.4409),
                    (0.2673, 0.2564, 0.2762), 'crop_flip'),
        'cifar100', _read_cifar100_dir,
        'download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz '
        'and extract it, then pass --config.data.dir=PATH (the folder holding '
        f'cifar-100-python), {_TFDS_HINT}'),
    'svhn': _Source(
        DatasetInfo('svhn', 10, (32, 32, 3), (0.4380, 0.4440, 0.4730),
                    (0.1751, 0.1771, 0.1744), 'crop'),
        'svhn_cropped', _read_svhn_dir,
        'download http://ufldl.stanford.edu/housenumbers/train_32x32.mat and '
        'http://ufldl.stanford.edu/housenumbers/test_32x32.mat into a folder '
        f'and pass --config.data.dir=PATH (needs scipy), {_TFDS_HINT}'),
    'mnist': _Source(
        DatasetInfo('mnist', 10, (28, 28, 1), (), (), 'none'),
        'mnist', _read_idx_dir,
        f'download {_IDX_FILES} from https://storage.googleapis.com/cvdf-'
        'datasets/mnist/ into a folder and pass --config.data.dir=PATH, '
        f'{_TFDS_HINT}'),
    'fashion_mnist': _Source(
        DatasetInfo('fashion_mnist', 10, (28, 28, 1), (), (), 'none'),
        'fashion_mnist', _read_idx_dir,
        f'apt-get install dataset-fashion-mnist (found at '
        f'{FASHION_MNIST_DEBIAN_DIR} automatically), or download {_IDX_FILES} '
        'from http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ into '
        f'a folder and pass --config.data.dir=PATH, {_TFDS_HINT}',
        default_dir=FASHION_MNIST_DEBIAN_DIR),
}

DATASET_INFOS: types.MappingProxyType[str, DatasetInfo] = types.MappingProxyType(
    {name: source.info for name, source in _SOURCES.items()})


# --------------------------------------------------------------------- loading


def _take_first(arrays: Arrays, n: int, split: str) -> Arrays:
  images, labels = arrays
  if n and n > len(labels):
    raise ValueError(f'n_{split}={n} but the {split} split has only '
                     f'{len(labels)} examples')
  return (images[:n], labels[:n]) if n else arrays


def _check(arrays: Arrays, info: DatasetInfo, split: str) -> None:
  images, labels = arrays
  if images.dtype != np.uint8 or images.shape[1:] != info.image_shape:
    raise ValueError(f'{info.name} {split} images are {images.dtype} '
                     f'{images.shape}, expected uint8 (N, *{info.image_shape})')
  if labels.shape != images.shape[:1]:
    raise ValueError(f'{info.name} {split}: {len(images)} images but labels '
                     f'of shape {labels.shape}')
  if labels.size and not 0 <= labels.min() <= labels.max() < info.num_classes:
    raise ValueError(f'{info.name} {split} labels outside [0, '
                     f'{info.num_classes}): [{labels.min()}, {labels.max()}]')


def _read(source: _Source, kind: str, root: str | None, n_train: int,
          n_test: int) -> Splits:
  """Reads the splits from the resolved source ``kind``."""
  if kind not in ('auto', 'dir', 'tfds'):
    raise ValueError(f"unknown data source {kind!r}; use 'auto', 'dir' or 'tfds'")
  if kind == 'tfds':
    return _read_tfds(source.tfds_name, n_train, n_test, download=True)
  if root:
    return source.read_dir(root)
  if kind == 'dir':
    raise DatasetNotFoundError('source=dir but no data.dir given')
  if _tfds_prepared(source.tfds_name):
    return _read_tfds(source.tfds_name, n_train, n_test, download=False)
  raise DatasetNotFoundError('no data.dir given and no prepared TFDS copy')


def _default_dir(source: _Source) -> str | None:
  if source.default_dir and os.path.isdir(source.default_dir):
    return source.default_dir
  return None


def load_dataset(config: Any) -> Dataset:
  """Loads ``config.name`` from ``config.source`` ('auto', 'dir' or 'tfds').

  Args:
    config: has ``name``, and optionally ``source`` (default 'auto'), ``dir``
      (str, None or ''), ``n_train`` and ``n_test`` (the first n examples of
      each split; 0 or None means all).

  Raises:
    ValueError: unknown name or source, corrupt files, or n beyond the split.
    DatasetNotFoundError: the data set is missing; the message says how to
      get it.
  """
  name = config.name
  if name not in _SOURCES:
    raise ValueError(f'unknown data set {name!r}; known: {", ".join(_SOURCES)}')
  source = _SOURCES[name]
  kind = getattr(config, 'source', None) or 'auto'
  root = getattr(config, 'dir', None) or _default_dir(source)
  n_train = getattr(config, 'n_train', None) or 0
  n_test = getattr(config, 'n_test', None) or 0
  try:
    train, test = _read(source, kind, root, n_train, n_test)
  except DatasetNotFoundError as e:
    raise DatasetNotFoundError(
        f'{name} not found ({e}). To get it: {source.how_to_get}.') from None
  train = _take_first(train, n_train, 'train')
  test = _take_first(test, n_test, 'test')
  _check(train, source.info, 'train')
  _check(test, source.info, 'test')
  return Dataset(train[0], train[1], test[0], test[1], source.info)
