"""The input path of a run: in-memory arrays or the grain stream (``config.data.pipeline``).

``pipeline`` 'memory' loads a data set whole (`sources.load_dataset`); 'stream' reads it with
the grain pipeline of `fat_jax.data.stream`; 'auto' streams the folder data sets
(`STREAM_INFOS`: Tiny-ImageNet, ImageNet-100, any image folder) and holds the others
(CIFAR, SVHN, MNIST, Fashion-MNIST), which can also be streamed (from their arrays). Any other
name with ``source`` 'tfds' is a prepared TFDS image data set, streamed (`tfds_images`:
``imagenet2012``, ``imagenet_resized/64x64``, ...). ``augment`` other than 'auto' replaces the
on-device augmentation of a data set the device augments (SVHN with 'crop_flip', as AAER's
``SVHN/utils.py``). The loop sees one interface either way: `load_data` and `train_batches`.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the streaming path imports grain when it runs (`stream.import_grain`)
  import grain

from fat_jax.data import folders
from fat_jax.data.images import MAX_PIXELS, count_conversions
from fat_jax.data.pipeline import AUGMENT_MODES, iterate_batches, shard_batch, shard_local_batch
from fat_jax.data.sources import (DATASET_INFOS, Dataset, DatasetInfo, DatasetNotFoundError,
                                  load_dataset)
from fat_jax.data.stream import (ArraySource, HostTransform, Layout, TestImages, TrainStream,
                                 import_grain, read_test, train_dataset)
from fat_jax.data.tfds_images import TFDSImages, tfds_image_splits

PIPELINES = ('auto', 'memory', 'stream')
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# LAP / AAER Tiny-imagenet/utils.py normalise with these (CIFAR-100's statistics).
TINY_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
TINY_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)

# The folder data sets; the device does not augment them (the host does, `HostTransform`).
STREAM_INFOS = {
    'tiny_imagenet': DatasetInfo('tiny_imagenet', 200, (64, 64, 3), TINY_MEAN, TINY_STD, 'none'),
    'imagenet100': DatasetInfo('imagenet100', 100, (224, 224, 3), IMAGENET_MEAN, IMAGENET_STD,
                               'none'),
    # Classes and size from the folder and data.image_size (default 224).
    'image_folder': DatasetInfo('image_folder', 0, (224, 224, 3), IMAGENET_MEAN, IMAGENET_STD,
                                'none'),
}
_READERS = {'tiny_imagenet': folders.tiny_imagenet, 'imagenet100': folders.imagenet100,
            'image_folder': folders.image_folder}
_HOW_TO_GET = {
    'tiny_imagenet': 'download http://cs231n.stanford.edu/tiny-imagenet-200.zip, extract it '
                     'and pass --config.data.dir=PATH (the folder holding tiny-imagenet-200)',
    'imagenet100': 'get ImageNet (ILSVRC2012) from https://image-net.org, sort its val images '
                   'into one folder per class and pass --config.data.dir=PATH (the folder '
                   'holding train/ and val/); a wnids.txt there replaces the default 100 classes',
    'image_folder': 'pass --config.data.dir=PATH, the folder holding train/<class>/ and '
                    'val/<class>/',
}


@dataclasses.dataclass(frozen=True, eq=False)
class StreamingDataset:
  """A data set read by the grain pipeline: random-access train and test sources (items
  ``(path or image, label)``), the host transform, the number of worker processes and, per
  split of a folder data set, the files converted to RGB by colour mode
  (``{'train': {'L': 12}, 'test': {}}``, `images.count_conversions`)."""
  train: Sequence
  test: Sequence
  transform: HostTransform
  info: DatasetInfo
  workers: int = 0
  conversions: dict = dataclasses.field(default_factory=dict)

  @property
  def num_train(self) -> int:
    return len(self.train)

  def test_subset(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` test examples (0 or more than there are: all), decoded and transformed
    for test."""
    n = min(n or len(self.test), len(self.test))
    return read_test(self.test, self.transform, n, workers=self.workers)

  def test_batches(self, n: int) -> tuple[TestImages, np.ndarray]:
    """`test_subset`'s examples with the images decoded only when a batch is sliced
    (`TestImages`) and the labels read from the source."""
    n = min(n or len(self.test), len(self.test))
    labels = np.asarray([self.test[i][1] for i in range(n)], np.int32)
    return TestImages(self.test, self.transform, n, self.workers), labels


def _first(source: Any, n: int, split: str) -> Any:
  if n and n > len(source):
    raise ValueError(f'n_{split}={n} but the {split} split has only {len(source)} examples')
  if not n:
    return source
  if isinstance(source, TFDSImages):
    return dataclasses.replace(source, size=n)
  return folders.FileList(source.paths[:n], source.labels[:n], source.classes)


def _tfds_data(config: Any) -> StreamingDataset:
  """A prepared TFDS image data set, streamed (`tfds_images`)."""
  max_pixels = getattr(config, 'max_image_pixels', None) or MAX_PIXELS
  train, test, transform, num_classes = tfds_image_splits(
      config.name, getattr(config, 'dir', None) or '', getattr(config, 'image_size', None) or 0,
      max_pixels)
  info = DatasetInfo(config.name, num_classes, (transform.size, transform.size, 3),
                     IMAGENET_MEAN, IMAGENET_STD, 'none')
  return StreamingDataset(_first(train, getattr(config, 'n_train', None) or 0, 'train'),
                          _first(test, getattr(config, 'n_test', None) or 0, 'test'),
                          transform, info, getattr(config, 'workers', None) or 0)


def _folder_data(config: Any) -> tuple[Sequence, Sequence, HostTransform, DatasetInfo]:
  name, root = config.name, getattr(config, 'dir', None)
  if not root:
    raise DatasetNotFoundError(f'{name} not found (no data.dir given). To get it: '
                               f'{_HOW_TO_GET[name]}.')
  read = _READERS[name]
  try:
    train, test = read(root, 'train'), read(root, 'val')
  except folders.LayoutError as e:
    raise DatasetNotFoundError(f'{name}: {e}. To get it: {_HOW_TO_GET[name]}.') from None
  info = STREAM_INFOS[name]
  max_pixels = getattr(config, 'max_image_pixels', None) or MAX_PIXELS
  if name == 'tiny_imagenet':
    transform = HostTransform('crop_flip', 64, pad=8, max_pixels=max_pixels)
  else:
    size = getattr(config, 'image_size', None) or info.image_shape[0]
    transform = HostTransform('imagenet', size, resize=int(round(size * 256 / 224)),
                              max_pixels=max_pixels)
    info = dataclasses.replace(info, num_classes=len(train.classes),
                               image_shape=(size, size, 3))
  return train, test, transform, info


def load_data(config: Any) -> Dataset | StreamingDataset:
  """The data set of `config` (``config.data``) on the input path ``config.pipeline`` chooses.
  A folder data set's files converted to RGB are counted per split and logged.

  Raises:
    ValueError: unknown name, pipeline or augment, a folder or TFDS-streamed data set with
      pipeline 'memory' (or an augment other than 'auto'), or a subset larger than its split.
    DatasetNotFoundError: the data is missing; the message says how to get it.
    ImageError: a file of a folder data set whose header cannot be read (named).
  """
  data = _load(config)
  augment = getattr(config, 'augment', None) or 'auto'
  if augment == 'auto' or augment == data.info.augment:
    return data
  if augment not in AUGMENT_MODES:
    raise ValueError(f"unknown data.augment {augment!r}; use 'auto' or one of {AUGMENT_MODES}")
  if isinstance(data, StreamingDataset) and data.transform.kind != 'none':
    raise ValueError(f'{config.name} is augmented on the host ({data.transform.kind!r}): '
                     "data.augment must stay 'auto'")
  return dataclasses.replace(data, info=dataclasses.replace(data.info, augment=augment))


def _load(config: Any) -> Dataset | StreamingDataset:
  name = config.name
  pipeline = getattr(config, 'pipeline', None) or 'auto'
  if pipeline not in PIPELINES:
    raise ValueError(f"unknown data.pipeline {pipeline!r}; use one of {PIPELINES}")
  tfds = (getattr(config, 'source', None) == 'tfds' and name not in DATASET_INFOS
          and name not in STREAM_INFOS)
  if not tfds and name not in STREAM_INFOS and name not in DATASET_INFOS:
    raise ValueError(f'unknown data set {name!r}; known: '
                     f'{", ".join([*DATASET_INFOS, *STREAM_INFOS])}, or a prepared TFDS '
                     "image data set with data.source='tfds'")
  if tfds:
    if pipeline == 'memory':
      raise ValueError(f"{name} (TFDS) is read by the streaming path: use data.pipeline="
                       "'stream' (or 'auto')")
    return _tfds_data(config)
  if name in STREAM_INFOS:
    if pipeline == 'memory':
      raise ValueError(f"{name} is read by the streaming path: use data.pipeline='stream' "
                       "(or 'auto')")
    train, test, transform, info = _folder_data(config)
  elif pipeline in ('auto', 'memory'):
    return load_dataset(config)
  else:
    data = load_dataset(config)  # its subsets already taken
    return StreamingDataset(ArraySource(data.train_images, data.train_labels),
                            ArraySource(data.test_images, data.test_labels),
                            HostTransform('none', data.info.image_shape[0]), data.info,
                            getattr(config, 'workers', None) or 0)
  train = _first(train, getattr(config, 'n_train', None) or 0, 'train')
  test = _first(test, getattr(config, 'n_test', None) or 0, 'test')
  conversions = {'train': count_conversions(train.paths), 'test': count_conversions(test.paths)}
  logging.info('%s: converted to RGB: %s', name, _describe(conversions, train, test))
  return StreamingDataset(train, test, transform, info, getattr(config, 'workers', None) or 0,
                          conversions)


def _describe(conversions: dict, train: Sequence, test: Sequence) -> str:
  """'3 of 100 train images (L 2, CMYK 1), 0 of 10 test images'."""
  parts = []
  for split, source in (('train', train), ('test', test)):
    modes = conversions[split]
    detail = f' ({", ".join(f"{m} {n}" for m, n in modes.items())})' if modes else ''
    parts.append(f'{sum(modes.values())} of {len(source)} {split} images{detail}')
  return ', '.join(parts)


class MemoryBatches:
  """The in-memory path's batches, placed on the mesh (`iterate_batches`, `shard_batch`)."""

  def __init__(self, data: Dataset, batch_size: int, seed: int, mesh):
    self.data, self.batch_size, self.seed, self.mesh = data, batch_size, seed, mesh

  def epoch(self, epoch: int) -> Iterator[tuple[Any, Any, Any]]:
    """Yields the device arrays ``(images, labels, indices)`` of each batch of `epoch`."""
    for indices, images, labels in iterate_batches(self.data.train_images,
                                                   self.data.train_labels, self.batch_size,
                                                   self.seed, epoch):
      yield shard_batch((images, labels, indices), self.mesh)

  def state(self) -> None:
    """No state: the order is a function of (seed, epoch)."""
    return None

  def restore(self, state: dict | None) -> None:
    del state


class StreamBatches:
  """The streaming path's batches: this host's rows from its `TrainStream`, assembled into
  global arrays on the mesh (`shard_local_batch`)."""

  def __init__(self, stream: TrainStream, mesh):
    self.stream, self.mesh = stream, mesh

  def epoch(self, epoch: int) -> Iterator[tuple[Any, Any, Any]]:
    for indices, images, labels in self.stream.epoch(epoch):
      yield shard_local_batch((images, labels, indices), self.mesh)

  def state(self) -> dict:
    return self.stream.state()

  def restore(self, state: dict | None) -> None:
    if state is None:
      raise ValueError('the checkpoint holds no data iterator state (a run of the in-memory '
                       'path): resume it with data.pipeline=\'memory\'')
    self.stream.restore(state)


def train_batches(data: Dataset | StreamingDataset, *, batch_size: int, seed: int,
                  num_epochs: int, mesh, shard: grain.sharding.ShardOptions | None = None
                  ) -> MemoryBatches | StreamBatches:
  """The training batches of `data` for `num_epochs` epochs; `shard` (streaming only) is this
  host's share, by default ``grain.sharding.ShardByJaxProcess()``."""
  if isinstance(data, Dataset):
    return MemoryBatches(data, batch_size, seed, mesh)
  shard = shard or import_grain().sharding.ShardByJaxProcess()
  layout = Layout(data.num_train, batch_size, shard.shard_index, shard.shard_count)
  stream = TrainStream(train_dataset(data.train, data.transform, layout, seed, num_epochs),
                       layout.steps, data.workers)
  return StreamBatches(stream, mesh)
