"""Bounded image decoding and the host-side transforms of the ImageNet recipes.

`decode_image` reads a JPEG/PNG/PPM/BMP file (untrusted input; a path, or its bytes as
`Encoded`) as uint8 (H, W, 3): the image size is read from the header and checked against a
pixel cap before anything is decoded; any colour mode (grayscale, palette, CMYK, with or
without alpha) is converted to RGB by Pillow's ``convert('RGB')``, the rule of the official
loaders' PIL path (``loadPILImage`` in ``tmllab/2024_ICML_LAP``
``Tiny-imagenet/tiny_imagenet.py``; the alpha channel is dropped). A truncated or undecodable
file raises `ImageError`, one line naming the file. `count_conversions` counts, per colour
mode, the files of a split that the rule converts (from their headers).

The transforms follow torchvision on PIL images (``transforms.RandomResizedCrop``,
``Resize``, ``CenterCrop``; bilinear resampling), as ``tmllab/2023_NeurIPS_AAER``
``Imagenet-100/utils.py`` uses them; their randomness comes from a NumPy generator.
"""
from __future__ import annotations

import collections
import io
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from PIL import Image

# The official loaders' IMG_EXTENSIONS (LAP / AAER ``tiny_imagenet.py``, ``Imagenet.py``).
IMAGE_EXTENSIONS = ('.jpg', '.JPG', '.jpeg', '.JPEG', '.png', '.PNG', '.ppm', '.PPM', '.bmp',
                    '.BMP')
MAX_PIXELS = 50_000_000  # per image; ImageNet's largest training image has ~ 8 × 10⁶


class ImageError(ValueError):
  """An image file that cannot be read; the message names it."""


def is_image_file(name: str) -> bool:
  return name.endswith(IMAGE_EXTENSIONS)


class Encoded(NamedTuple):
  """An encoded image file held in memory (a TFDS image feature read undecoded) and the name
  its errors give."""
  data: bytes
  name: str


def open_image(path: str | Encoded, max_pixels: int = MAX_PIXELS) -> Image.Image:
  """The decoded RGB image of the file at `path` (or of `Encoded` bytes); refuses images over
  `max_pixels` before decoding them."""
  file = io.BytesIO(path.data) if isinstance(path, Encoded) else path
  if isinstance(path, Encoded):
    path = path.name
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(file) as image:
        width, height = image.size
        if width * height > max_pixels:
          raise ImageError(f'{path}: {width}x{height} image exceeds the cap of {max_pixels} '
                           'pixels (data.max_image_pixels)')
        image.load()
        return image if image.mode == 'RGB' else image.convert('RGB')
  except ImageError:
    raise
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
          Image.DecompressionBombError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ImageError(f'{path}: not a readable image ({reason})') from None


def colour_mode(path: str) -> str:
  """The PIL mode of the image at `path` ('RGB', 'L', 'P', 'CMYK', 'RGBA', …), read from its
  header without decoding the pixels."""
  try:
    with Image.open(path) as image:
      return image.mode
  except (OSError, ValueError, SyntaxError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ImageError(f'{path}: not a readable image ({reason})') from None


def _count_modes(paths: Sequence[str]) -> collections.Counter:
  return collections.Counter(map(colour_mode, paths))


def count_conversions(paths: Sequence[str], threads: int = 16) -> dict[str, int]:
  """{mode: number of files of `paths` in that mode} for the modes other than RGB: the files
  that `open_image` converts to RGB. Reads headers only, with `threads` threads."""
  chunks = (paths[i:i + 1024] for i in range(0, len(paths), 1024))
  with ThreadPoolExecutor(threads) as pool:
    modes = sum(pool.map(_count_modes, chunks), collections.Counter())
  modes.pop('RGB', None)
  return dict(sorted(modes.items()))


def decode_image(path: str | Encoded, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """The image at `path` (or of `Encoded` bytes) as uint8 (H, W, 3) RGB (see the module
  docstring for the rules)."""
  return np.asarray(open_image(path, max_pixels), np.uint8)


def resized_crop_box(rng: np.random.Generator, width: int, height: int,
                     scale: tuple[float, float] = (0.08, 1.0),
                     ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(top, left, h, w) of torchvision's ``RandomResizedCrop.get_params``: up to 10 draws of an
  area fraction in `scale` and a log-uniform aspect ratio in `ratio`, else the centre crop
  clamped to `ratio`."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_flip(image: Image.Image, size: int,
                             rng: np.random.Generator) -> np.ndarray:
  """``RandomResizedCrop(size)`` then ``RandomHorizontalFlip()`` (probability 1/2), uint8."""
  top, left, h, w = resized_crop_box(rng, *image.size)
  crop = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
  out = np.asarray(crop, np.uint8)
  return out[:, ::-1] if rng.random() < 0.5 else out


def resize_center_crop(image: Image.Image, resize: int, size: int) -> np.ndarray:
  """``Resize(resize)`` (the shorter side to `resize`, the other ``int(resize · long /
  short)``) then ``CenterCrop(size)``, uint8."""
  width, height = image.size
  if width <= height:
    new_w, new_h = resize, int(resize * height / width)
  else:
    new_w, new_h = int(resize * width / height), resize
  resized = image.resize((new_w, new_h), Image.BILINEAR)
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return np.asarray(resized.crop((left, top, left + size, top + size)), np.uint8)
