"""TFDS image data sets on the streaming path: a prepared TFDS data set (ArrayRecord files) read
by ``tfds.data_source``, the random-access source grain reads, e.g. ``imagenet2012`` (prepared
by hand from the ILSVRC2012 tars) or ``imagenet_resized/64x64``.

The image feature is read undecoded (``tfds.decode.SkipDecoding``) and decoded on the host by
`images.decode_image` (the pixel cap, RGB conversion, one error line naming the record), so
the host transform is that of the folder data sets:

* a data set of fixed S × S images: ``RandomCrop(S, padding=S/8)`` + flip for training (the
  CIFAR (32, 4) and Tiny-ImageNet (64, 8) rule), the image as it is for test;
* images of any size: ``RandomResizedCrop(size)`` + flip for training, ``Resize(size·256/224)``
  + ``CenterCrop(size)`` for test (ImageNet's), size = ``data.image_size`` (default 224).

Classes from the ``label`` ClassLabel feature; ImageNet's μ/σ; the training split 'train', the
test split 'validation' (else 'test'). Reading needs tensorflow_datasets and array_record, no
TensorFlow (``pip install 'fat_jax[tfds]'``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from fat_jax.data.images import MAX_PIXELS, Encoded
from fat_jax.data.sources import DatasetNotFoundError
from fat_jax.data.stream import HostTransform

TEST_SPLITS = ('validation', 'test')


def import_tfds() -> Any:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("data.source='tfds' needs TensorFlow Datasets: pip install "
                      "'fat_jax[tfds]'") from e
  return tfds


@dataclasses.dataclass(frozen=True)
class TFDSImages:
  """Split `split` of the prepared TFDS data set `name` (in `data_dir`, '' = TFDS's default),
  its first `size` records: index → (`Encoded` image bytes, label). Picklable (grain workers
  reopen the files)."""
  name: str
  split: str
  data_dir: str
  size: int

  def _source(self):
    source = self.__dict__.get('_open')
    if source is None:
      tfds = import_tfds()
      source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir or None,
                                download=False,
                                decoders={'image': tfds.decode.SkipDecoding()})
      object.__setattr__(self, '_open', source)
    return source

  def __getstate__(self):
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def __setstate__(self, state):
    self.__dict__.update(state)

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> tuple[Encoded, int]:
    if not 0 <= index < self.size:
      raise IndexError(f'{self.name} {self.split}: record {index} of {self.size}')
    record = self._source()[index]
    return Encoded(record['image'], f'{self.name} {self.split}[{index}]'), int(record['label'])


def tfds_image_splits(name: str, data_dir: str = '', image_size: int = 0,
                      max_pixels: int = MAX_PIXELS
                      ) -> tuple[TFDSImages, TFDSImages, HostTransform, int]:
  """(train, test, host transform, number of classes) of the prepared TFDS data set `name`.

  Raises:
    DatasetNotFoundError: `name` is not prepared in `data_dir` (the message says how).
    ValueError: no 'image' Image or 'label' ClassLabel feature, no test split, or an
      `image_size` other than a fixed-size data set's own.
  """
  tfds = import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    prepared = builder.is_prepared()
  except tfds.core.registered.DatasetNotFoundError:
    prepared = False
  if not prepared:
    raise DatasetNotFoundError(
        f"no prepared TFDS data set {name!r} in {data_dir or 'the TFDS data dir'}: prepare it "
        f'(tfds build {name} --data_dir=DIR --file_format=array_record; imagenet2012 needs the '
        'ILSVRC2012 tars in DIR/downloads/manual) and pass --config.data.dir=DIR')
  features = builder.info.features
  image = features['image'] if 'image' in features else None
  label = features['label'] if 'label' in features else None
  if (not isinstance(image, tfds.features.Image)
      or not isinstance(label, tfds.features.ClassLabel)):
    raise ValueError(f"{name}: the streaming path reads an 'image' Image feature and a "
                     f"'label' ClassLabel feature; it has {sorted(features)}")
  splits = builder.info.splits
  test = next((s for s in TEST_SPLITS if s in splits), None)
  if 'train' not in splits or test is None:
    raise ValueError(f"{name}: needs a 'train' split and one of {TEST_SPLITS}; it has "
                     f'{sorted(splits)}')
  height, width = image.shape[:2]
  if height is not None and height == width:
    if image_size and image_size != height:
      raise ValueError(f'{name} holds {height}x{width} images: data.image_size={image_size} '
                       'does not apply (leave it 0)')
    transform = HostTransform('crop_flip', height, pad=height // 8, max_pixels=max_pixels)
  else:
    size = image_size or 224
    transform = HostTransform('imagenet', size, resize=int(round(size * 256 / 224)),
                              max_pixels=max_pixels)
  return (TFDSImages(name, 'train', data_dir, splits['train'].num_examples),
          TFDSImages(name, test, data_dir, splits[test].num_examples), transform,
          label.num_classes)
