"""The streaming input path: a grain pipeline over a random-access source, read per host.

The training batches of a whole run are one `grain.MapDataset`: element k of a host's
dataset is its share of global batch k (epochs in order, ``steps`` batches each), so one
iterator runs through the run and its state (``get_state``) is the position in it. The order
is the in-memory path's (`pipeline.epoch_permutation` of ``(seed, epoch)``, the last
``N mod batch_size`` examples of each epoch left out), so both paths give the same global
batches. Per host (``grain.sharding.ShardOptions``: ``shard_index`` of ``shard_count``,
by default ``ShardByJaxProcess``) a global batch of B rows is read as B / count rows:
host p reads rows [p B / count, (p + 1) B / count), the rows its devices hold in a batch
sharded over the mesh axis 'data' (`pipeline.shard_local_batch`).

Each example is decoded (`images.decode_image`) and transformed on the host (`HostTransform`)
in the dataset's ``map``, in ``workers`` grain worker processes (``mp_prefetch``; 0 = in this
process), each reading with `READ_THREADS` threads and at most `PREFETCH` batches ahead. Host-side randomness is drawn from ``np.random.default_rng((seed, epoch, index))``:
a function of the example and the epoch only, so the batches do not depend on the number of
hosts or workers.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # imported at run time by `import_grain` only
  import grain

from fat_jax.data import images as image_ops
from fat_jax.data.pipeline import epoch_permutation

HOST_TRANSFORMS = ('none', 'crop_flip', 'imagenet')
# Per process (this one, or each worker): threads reading batches and batches read ahead, so
# that at most READ_THREADS + PREFETCH batches are held (grain's defaults, 16 and 500, would
# hold gigabytes of ImageNet batches).
READ_THREADS, PREFETCH = 4, 4


def import_grain() -> Any:
  """grain, imported only by the streaming path (``pip install 'fat_jax[stream]'``)."""
  try:
    import grain  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("data.pipeline='stream' needs grain: pip install 'fat_jax[stream]'"
                      ) from e
  return grain


class ArraySource:
  """In-memory uint8 images (N, H, W, C) and labels as a random-access source."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f'{len(images)} images but {len(labels)} labels')
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.images[index], int(self.labels[index])


@dataclasses.dataclass(frozen=True)
class HostTransform:
  """What the host does to a decoded example.

  * 'none': the image as it is; it must be ``size`` × ``size`` (the device augments it, as
    the in-memory path does).
  * 'crop_flip': training: ``RandomCrop(size, padding=pad)`` (zero padding, offsets uniform
    in [0, 2 pad]) and a horizontal flip with probability 1/2; test: the image as it is
    (LAP / AAER ``Tiny-imagenet/utils.py``: ``RandomCrop(64, padding=8)``).
  * 'imagenet': training: ``RandomResizedCrop(size)`` and the flip; test: ``Resize(resize)``
    and ``CenterCrop(size)`` (AAER ``Imagenet-100/utils.py``: 224 and 256).
  """
  kind: str
  size: int
  pad: int = 0
  resize: int = 0
  max_pixels: int = image_ops.MAX_PIXELS

  def __post_init__(self):
    if self.kind not in HOST_TRANSFORMS:
      raise ValueError(f'unknown host transform {self.kind!r}; known: {HOST_TRANSFORMS}')

  def __call__(self, item: Any, *, train: bool, rng: np.random.Generator) -> np.ndarray:
    """The uint8 (size, size, C) image of `item` (a path, `images.Encoded` bytes, or an
    array)."""
    encoded = isinstance(item, (str, image_ops.Encoded))
    what = item if isinstance(item, str) else item.name if encoded else 'image'
    if self.kind == 'imagenet':
      image = (image_ops.open_image(item, self.max_pixels) if encoded
               else Image.fromarray(np.asarray(item, np.uint8)))
      if train:
        return image_ops.random_resized_crop_flip(image, self.size, rng)
      return image_ops.resize_center_crop(image, self.resize, self.size)
    array = image_ops.decode_image(item, self.max_pixels) if encoded else np.asarray(item)
    if array.shape[:2] != (self.size, self.size):
      raise image_ops.ImageError(f'{what}: {array.shape[1]}x{array.shape[0]} image in a set of '
                                 f'{self.size}x{self.size} images')
    if self.kind == 'none' or not train:
      return array
    top, left = rng.integers(0, 2 * self.pad + 1, size=2)
    padded = np.pad(array, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
    crop = padded[top:top + self.size, left:left + self.size]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where host `shard_index` of `shard_count` reads each global batch of `batch_size` rows."""
  num_examples: int
  batch_size: int
  shard_index: int = 0
  shard_count: int = 1

  def __post_init__(self):
    if self.batch_size % self.shard_count:
      raise ValueError(f'batch_size={self.batch_size} is not divisible by the '
                       f'{self.shard_count} hosts')

  @property
  def steps(self) -> int:
    return self.num_examples // self.batch_size

  @property
  def local_batch(self) -> int:
    return self.batch_size // self.shard_count

  def locate(self, position: int) -> tuple[int, int]:
    """(epoch, global row in the epoch's order) of element `position` of this host's stream."""
    per_epoch = self.steps * self.local_batch
    epoch, j = divmod(position, per_epoch)
    step, r = divmod(j, self.local_batch)
    return epoch + 1, step * self.batch_size + self.shard_index * self.local_batch + r


class _Example:
  """Position → {'image', 'label', 'index'} of a host's training stream (picklable, so that
  grain workers run it)."""

  def __init__(self, source: Sequence, transform: HostTransform, layout: Layout, seed: int):
    self.source, self.transform, self.layout, self.seed = source, transform, layout, seed
    self._orders: dict[int, np.ndarray] = {}

  def __getstate__(self):
    return {**self.__dict__, '_orders': {}}

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      self._orders = {epoch: epoch_permutation(self.layout.num_examples, self.seed, epoch)}
    return self._orders[epoch]

  def __call__(self, position: int) -> dict:
    epoch, row = self.layout.locate(position)
    index = int(self._order(epoch)[row])
    item, label = self.source[index]
    rng = np.random.default_rng((self.seed, epoch, index))
    return {'image': self.transform(item, train=True, rng=rng), 'label': np.int32(label),
            'index': np.int64(index)}


def train_dataset(source: Sequence, transform: HostTransform, layout: Layout, seed: int,
                  num_epochs: int) -> grain.MapDataset:
  """A host's training batches of epochs 1..`num_epochs`: element k = its rows of global
  batch k, a dict of 'image' uint8 (b, H, W, C), 'label' int32 (b,), 'index' int64 (b,)."""
  if layout.steps == 0:
    raise ValueError(f'batch_size={layout.batch_size} exceeds the {layout.num_examples} '
                     'training examples')
  return (import_grain().MapDataset.range(num_epochs * layout.steps * layout.local_batch)
          .map(_Example(source, transform, layout, seed))
          .batch(layout.local_batch, drop_remainder=True))


class _TestExample:
  def __init__(self, source: Sequence, transform: HostTransform):
    self.source, self.transform = source, transform

  def __call__(self, index: int) -> dict:
    item, label = self.source[index]
    return {'image': self.transform(item, train=False, rng=np.random.default_rng(0)),
            'label': np.int32(label)}


def _iterate(dataset: grain.MapDataset, workers: int) -> grain.DatasetIterator:
  """An iterator over `dataset` (of batches): `READ_THREADS` threads and at most `PREFETCH`
  batches ahead in this process, or in each of `workers` worker processes."""
  grain = import_grain()
  iter_dataset = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=PREFETCH))
  if workers:
    from absl import flags  # pylint: disable=import-outside-toplevel
    if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags
      flags.FLAGS.mark_as_parsed()
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(iter_dataset)


def read_test(source: Sequence, transform: HostTransform, n: int, *, workers: int = 0,
              batch_size: int = 256, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Test examples `start` … `start` + n − 1 (test-time transform) as uint8 images and int32
  labels."""
  dataset = (import_grain().MapDataset.range(start, start + n)
             .map(_TestExample(source, transform)).batch(batch_size))
  batches = list(_iterate(dataset, workers))
  return (np.concatenate([np.asarray(b['image']) for b in batches]),
          np.concatenate([np.asarray(b['label']) for b in batches]))


@dataclasses.dataclass(frozen=True, eq=False)
class TestImages:
  """The first `n` test examples of `source` (test-time transform), decoded when sliced and
  not held: ``images[lo:hi]`` is the uint8 batch of examples lo … hi − 1 (`read_test`), so an
  evaluation that walks them in batches (the monitor, a run's final evaluation) holds one
  batch of pixels at a time."""
  source: Sequence
  transform: HostTransform
  n: int
  workers: int = 0

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: slice) -> np.ndarray:
    if not isinstance(index, slice) or index.step not in (None, 1):
      raise TypeError(f'TestImages are read in contiguous slices, not {index!r}')
    lo, hi, _ = index.indices(self.n)
    if hi <= lo:   # an empty batch of the images' shape
      return self[0:1][:0]
    return read_test(self.source, self.transform, hi - lo, start=lo, workers=self.workers)[0]


class TrainStream:
  """A host's training batches, epoch by epoch, from one grain iterator whose state is saved
  with each checkpoint (`state`, `restore`). The state is the same on every host (the
  position in the stream)."""

  def __init__(self, dataset: grain.MapDataset, steps: int, workers: int = 0):
    self._dataset, self.steps, self._workers = dataset, steps, workers
    self._iterator = None
    self._next_epoch = 1

  def _iter(self) -> grain.DatasetIterator:
    if self._iterator is None:
      self._iterator = _iterate(self._dataset, self._workers)
    return self._iterator

  def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields this host's ``(indices, images, labels)`` of each batch of `epoch`."""
    if epoch != self._next_epoch:
      raise ValueError(f'the stream is at epoch {self._next_epoch}, not {epoch}: restore its '
                       f'state from the checkpoint of epoch {epoch - 1}')
    iterator = self._iter()
    for _ in range(self.steps):
      batch = next(iterator)
      yield np.asarray(batch['index']), np.asarray(batch['image']), np.asarray(batch['label'])
    self._next_epoch = epoch + 1

  def state(self) -> dict:
    """{'epoch': the last epoch read, 'iterator': grain's iterator state} (JSON values)."""
    return {'epoch': self._next_epoch - 1, 'iterator': self._iter().get_state()}

  def restore(self, state: dict) -> None:
    """Continue after the epoch of `state` (from `state`)."""
    self._iter().set_state(state['iterator'])
    self._next_epoch = int(state['epoch']) + 1
