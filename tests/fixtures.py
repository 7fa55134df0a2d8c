"""Tiny data sets written in their original distribution formats.

Each ``write_*`` function returns the path to pass as ``config.data.dir``.
Images follow `pattern_images` and labels `pattern_labels`, with training
examples numbered from 0 and test examples from `TEST_START`, so tests can
check exact pixel values (a wrong CHW/HWC transpose changes them).
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np

TEST_START = 1000


def pattern_images(start: int, n: int, shape: tuple[int, int, int]) -> np.ndarray:
  """uint8 (n, H, W, C) images of examples ``start..start+n-1``; every axis changes the value."""
  i, h, w, c = np.meshgrid(np.arange(start, start + n), *map(np.arange, shape),
                           indexing='ij')
  return ((13 * i + 7 * h + 3 * w + 101 * c) % 256).astype(np.uint8)


def pattern_labels(start: int, n: int, num_classes: int) -> np.ndarray:
  """int32 labels of examples ``start..start+n-1``."""
  return ((np.arange(start, start + n) * 7 + 3) % num_classes).astype(np.int32)


def _write_pickle(path: str, batch: dict[bytes, object]) -> None:
  with open(path, 'wb') as f:
    pickle.dump(batch, f)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
  """(N, 32, 32, 3) → the (N, 3072) CHW rows of the CIFAR python files."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10_dir(root: str, n_train_per_batch: int = 4, n_test: int = 5) -> str:
  """Writes ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``."""
  folder = os.path.join(root, 'cifar-10-batches-py')
  os.makedirs(folder, exist_ok=True)
  files = [(f'data_batch_{b + 1}', b * n_train_per_batch, n_train_per_batch)
           for b in range(5)] + [('test_batch', TEST_START, n_test)]
  for name, start, n in files:
    _write_pickle(os.path.join(folder, name), {
        b'batch_label': name.encode(),
        b'labels': pattern_labels(start, n, 10).tolist(),
        b'data': _cifar_rows(pattern_images(start, n, (32, 32, 3))),
        b'filenames': [f'{start + i}.png'.encode() for i in range(n)],
    })
  _write_pickle(os.path.join(folder, 'batches.meta'), {
      b'label_names': [f'class_{k}'.encode() for k in range(10)],
      b'num_cases_per_batch': n_train_per_batch, b'num_vis': 3072})
  return root


def write_cifar100_dir(root: str, n_train: int = 6, n_test: int = 5) -> str:
  """Writes ``root/cifar-100-python/{train, test, meta}``."""
  folder = os.path.join(root, 'cifar-100-python')
  os.makedirs(folder, exist_ok=True)
  for name, start, n in (('train', 0, n_train), ('test', TEST_START, n_test)):
    fine = pattern_labels(start, n, 100)
    _write_pickle(os.path.join(folder, name), {
        b'fine_labels': fine.tolist(),
        b'coarse_labels': (fine // 5).tolist(),
        b'data': _cifar_rows(pattern_images(start, n, (32, 32, 3))),
    })
  _write_pickle(os.path.join(folder, 'meta'), {
      b'fine_label_names': [f'fine_{k}'.encode() for k in range(100)],
      b'coarse_label_names': [f'coarse_{k}'.encode() for k in range(20)]})
  return root


def idx_bytes(array: np.ndarray) -> bytes:
  """A uint8 array in IDX format: magic 0x0000 08 ndim, big-endian uint32 dims, data."""
  header = struct.pack(f'>4B{array.ndim}I', 0, 0, 0x08, array.ndim, *array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx_dir(root: str, n_train: int = 6, n_test: int = 5, gz: bool = True) -> str:
  """Writes MNIST-format ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` into ``root``."""
  os.makedirs(root, exist_ok=True)
  for prefix, start, n in (('train', 0, n_train), ('t10k', TEST_START, n_test)):
    arrays = {'images-idx3': pattern_images(start, n, (28, 28, 1))[..., 0],
              'labels-idx1': pattern_labels(start, n, 10)}
    for kind, array in arrays.items():
      path = os.path.join(root, f'{prefix}-{kind}-ubyte')
      opener = gzip.open if gz else open
      with opener(path + '.gz' if gz else path, 'wb') as f:
        f.write(idx_bytes(array))
  return root


def write_svhn_dir(root: str, n_train: int = 6, n_test: int = 5) -> str:
  """Writes ``root/{train,test}_32x32.mat``: X (32, 32, 3, N), y (N, 1), digit 0 as 10."""
  from scipy import io as scipy_io  # pylint: disable=import-outside-toplevel
  os.makedirs(root, exist_ok=True)
  for name, start, n in (('train', 0, n_train), ('test', TEST_START, n_test)):
    labels = pattern_labels(start, n, 10)
    scipy_io.savemat(os.path.join(root, f'{name}_32x32.mat'), {
        'X': pattern_images(start, n, (32, 32, 3)).transpose(1, 2, 3, 0),
        'y': np.where(labels == 0, 10, labels).astype(np.uint8)[:, None],
    })
  return root
