"""Image data sets in folders, as random-access lists of (path, label).

Three layouts, each read in the file order of the official code (sorted names):

* `image_folder`: torchvision's ``ImageFolder`` convention, ``root/{train,val}/<class>/…``
  (files found recursively); the classes are the sorted folders of ``train``, and ``val``
  is labelled by that list.
* `tiny_imagenet`: the Tiny-ImageNet-200 archive as ``tmllab/2024_ICML_LAP``
  ``Tiny-imagenet/tiny_imagenet.py`` reads it: classes = the sorted ``wnids.txt``;
  ``train/<wnid>/images/*``; ``val/images/*`` labelled by ``val/val_annotations.txt``.
* `imagenet100`: ``tmllab/2023_NeurIPS_AAER`` ``Imagenet-100/Imagenet.py``:
  ``root/{train,val}/<wnid>/*`` for the 100 classes of ``root/wnids.txt`` (sorted). That file
  is not in AAER's repository; without it the classes are `IMAGENET100_WNIDS`, the ImageNet-100
  subset of Tian et al. (``HobbitLong/CMC`` ``imagenet100.txt``), over a full ImageNet folder
  whose ``val`` is sorted into class folders.

Bad layouts are refused with one line naming the folder or file: an empty class folder, a
``val`` class that ``train`` lacks, a class of the list without a folder, a validation image
without an annotation or an annotation naming a missing file.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from fat_jax.data.images import is_image_file

SPLITS = ('train', 'val')

# HobbitLong/CMC imagenet100.txt, in its order (class indices follow the sorted list).
IMAGENET100_WNIDS = tuple('''
n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245
n01773797 n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148
n03530642 n04435653 n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993
n04493381 n02109047 n04111531 n02877765 n04429376 n02009229 n01978455 n02106550 n01820546
n01692333 n07714571 n02974003 n02114855 n03785016 n03764736 n03775546 n02087046 n07836838
n04099969 n04592741 n03891251 n02701002 n03379051 n02259212 n07715103 n03947888 n04026417
n02326432 n03637318 n01980166 n02113799 n02086240 n03903868 n02483362 n04127249 n02089973
n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322 n02113978 n03787032
n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029 n03837869
n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672
n02090622'''.split())


class LayoutError(ValueError):
  """A data folder that does not have the expected layout; the message names the path."""


@dataclasses.dataclass(frozen=True, eq=False)
class FileList:
  """A split as a random-access source: item i is ``(paths[i], labels[i])``."""
  paths: tuple[str, ...]
  labels: np.ndarray  # int32 (N,)
  classes: tuple[str, ...]  # class names in label order

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> tuple[str, int]:
    return self.paths[index], int(self.labels[index])


def _dirs(path: str) -> list[str]:
  if not os.path.isdir(path):
    raise LayoutError(f'{path}: no such folder')
  return sorted(e.name for e in os.scandir(path) if e.is_dir())


def _images(folder: str, recursive: bool = False) -> list[str]:
  """The image files in `folder` (sorted; with `recursive`, os.walk order with sorted names,
  as torchvision's ``make_dataset``)."""
  if not recursive:
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if is_image_file(n)]
  return [os.path.join(root, n) for root, _, names in sorted(os.walk(folder, followlinks=True))
          for n in sorted(names) if is_image_file(n)]


def _class_files(root: str, classes: tuple[str, ...], folders: list[str],
                 recursive: bool, sub: str = '') -> FileList:
  """The images of each class folder ``root/<class>[/sub]``, labelled by `classes`."""
  index = {c: i for i, c in enumerate(classes)}
  paths, labels = [], []
  for name in folders:
    if name not in index:
      raise LayoutError(f'{os.path.join(root, name)}: class {name!r} is not among the '
                        f'{len(classes)} classes of the training split')
    folder = os.path.join(root, name, sub) if sub else os.path.join(root, name)
    if not os.path.isdir(folder):
      raise LayoutError(f'{folder}: no such folder')
    files = _images(folder, recursive)
    if not files:
      raise LayoutError(f'{folder}: empty class folder (no .jpg/.jpeg/.png/.ppm/.bmp file)')
    paths += files
    labels += [index[name]] * len(files)
  return FileList(tuple(paths), np.asarray(labels, np.int32), classes)


def _split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; use one of {SPLITS}')
  return split


def image_folder(root: str, split: str) -> FileList:
  """``root/<split>/<class>/…/*.{jpg,png,…}`` (torchvision ``ImageFolder``)."""
  classes = tuple(_dirs(os.path.join(root, 'train')))
  if not classes:
    raise LayoutError(f'{os.path.join(root, "train")}: no class folders')
  folder = os.path.join(root, _split(split))
  return _class_files(folder, classes, _dirs(folder), recursive=True)


def _tiny_root(root: str) -> str:
  nested = os.path.join(root, 'tiny-imagenet-200')
  return nested if os.path.isfile(os.path.join(nested, 'wnids.txt')) else root


def _read_wnids(path: str) -> tuple[str, ...]:
  if not os.path.isfile(path):
    raise LayoutError(f'{path}: no such file (the list of class wnids)')
  with open(path) as f:
    return tuple(sorted(line.strip() for line in f if line.strip()))


def tiny_imagenet(root: str, split: str) -> FileList:
  """Tiny-ImageNet-200 in ``root`` or ``root/tiny-imagenet-200`` (see the module docstring)."""
  root = _tiny_root(root)
  classes = _read_wnids(os.path.join(root, 'wnids.txt'))
  if _split(split) == 'train':
    folder = os.path.join(root, 'train')
    return _class_files(folder, classes, _dirs(folder), recursive=False, sub='images')
  folder = os.path.join(root, 'val')
  annotations = os.path.join(folder, 'val_annotations.txt')
  if not os.path.isfile(annotations):
    raise LayoutError(f'{annotations}: no such file')
  index = {c: i for i, c in enumerate(classes)}
  label_of = {}
  with open(annotations) as f:
    for n, line in enumerate(f, 1):
      fields = line.rstrip('\n').split('\t')
      if len(fields) < 2 or fields[1] not in index:
        raise LayoutError(f'{annotations}:{n}: expected "file<TAB>wnid" with a wnid of '
                          f'wnids.txt, got {line.strip()[:80]!r}')
      label_of[fields[0]] = index[fields[1]]
  images = os.path.join(folder, 'images')
  paths = _images(images) if os.path.isdir(images) else []
  names = {os.path.basename(p) for p in paths}
  for name in label_of:
    if name not in names:
      raise LayoutError(f'{annotations}: annotates {name}, which {images} lacks')
  for path in paths:
    if os.path.basename(path) not in label_of:
      raise LayoutError(f'{path}: not in {annotations}')
  return FileList(tuple(paths), np.asarray([label_of[os.path.basename(p)] for p in paths],
                                           np.int32), classes)


def imagenet100(root: str, split: str) -> FileList:
  """ImageNet-100 in ``root`` (or ``root/Imagenet-100``, AAER's folder name): the classes of
  ``wnids.txt`` if present, else `IMAGENET100_WNIDS`."""
  nested = os.path.join(root, 'Imagenet-100')
  root = nested if os.path.isdir(nested) else root
  wnids = os.path.join(root, 'wnids.txt')
  classes = (_read_wnids(wnids) if os.path.isfile(wnids) else tuple(sorted(IMAGENET100_WNIDS)))
  return _class_files(os.path.join(root, _split(split)), classes, list(classes),
                      recursive=False)
