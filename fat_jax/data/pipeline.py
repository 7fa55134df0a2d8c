"""Host-side batching, on-device augmentation and device placement.

Batches are drawn from in-memory uint8 arrays with a per-epoch permutation
seeded by ``(seed, epoch)``, so a run can resume at any epoch and get the same
order. Images stay uint8 on the host; `augment` converts them to float32 in
[0, 1] on device.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AUGMENT_MODES = ('crop_flip', 'crop', 'none')


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the examples in ``epoch``; a function of ``(seed, epoch)`` only."""
  return np.random.default_rng((seed, epoch)).permutation(num_examples)


def steps_per_epoch(num_examples: int, batch_size: int,
                    drop_remainder: bool = True) -> int:
  """Number of batches `iterate_batches` yields per epoch."""
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if drop_remainder:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def iterate_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
    epoch: int, *, shuffle: bool = True, drop_remainder: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields ``(indices, images[indices], labels[indices])`` for one epoch.

  With ``drop_remainder`` the last ``len(images) % batch_size`` examples of
  the epoch's order are skipped (they differ between epochs when shuffling);
  otherwise the last batch is smaller.
  """
  num_examples = len(labels)
  if len(images) != num_examples:
    raise ValueError(f'{len(images)} images but {num_examples} labels')
  order = (epoch_permutation(num_examples, seed, epoch) if shuffle
           else np.arange(num_examples))
  for step in range(steps_per_epoch(num_examples, batch_size, drop_remainder)):
    indices = order[step * batch_size:(step + 1) * batch_size]
    yield indices, images[indices], labels[indices]


@struct.dataclass
class Augmentation:
  """Per-example crop offsets (N, 2) into the image zero-padded by `pad`, and flip flags (N,),
  of augmentation `mode` (static, like `pad`)."""
  offsets: jax.Array
  flips: jax.Array
  mode: str = struct.field(pytree_node=False)
  pad: int = struct.field(pytree_node=False)


def _pad_crop(images: jax.Array, offsets: jax.Array, pad: int) -> jax.Array:
  """Crops each image back to its size from its zero-padded version at ``offsets`` (N, 2)."""
  return _crop(jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))), offsets,
               images.shape[1:3])


def _crop(padded: jax.Array, offsets: jax.Array, size: tuple[int, int]) -> jax.Array:
  """The (H, W) window of each padded image at its offset."""
  channels = padded.shape[-1]

  def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
    return lax.dynamic_slice(image, (offset[0], offset[1], 0), (*size, channels))

  return jax.vmap(crop)(padded, offsets)


def _batch_sharding(images: jax.Array) -> NamedSharding | None:
  """The sharding of per-example random draws under an Explicit mesh sharding ``images``."""
  sharding = jax.typeof(images).sharding
  batch_axis = sharding.spec[0]
  return None if batch_axis is None else NamedSharding(
      sharding.mesh, PartitionSpec(batch_axis))


def _flip(images: jax.Array, flags: jax.Array) -> jax.Array:
  """Mirrors horizontally the images whose flag (N,) is set."""
  return jnp.where(flags[:, None, None, None], images[:, :, ::-1, :], images)


def draw_augmentation(key: jax.Array, images: jax.Array, *, mode: str,
                      pad: int = 4) -> Augmentation:
  """The random crop offsets (uniform in [0, 2 pad]) and flips (probability 1/2) of `mode`.

  'crop' never flips; 'none' is the identity (pad 0, no flip).
  """
  if mode not in AUGMENT_MODES:
    raise ValueError(f'unknown augment mode {mode!r}; known: {AUGMENT_MODES}')
  n = images.shape[0]
  sharding = _batch_sharding(images)
  if mode == 'none':
    return Augmentation(jnp.zeros((n, 2), jnp.int32), jnp.zeros((n,), bool), mode, 0)
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1, out_sharding=sharding)
  flips = (jax.random.bernoulli(flip_key, 0.5, (n,), out_sharding=sharding)
           if mode == 'crop_flip' else jnp.zeros((n,), bool))
  return Augmentation(offsets, flips, mode, pad)


@functools.partial(jax.jit, static_argnames=('mode', 'pad'))
def augment(key: jax.Array, images: jax.Array, *, mode: str,
            pad: int = 4) -> jax.Array:
  """Converts pixel values in [0, 255] (uint8 or float) to float32 in [0, 1] and augments.

  Modes: 'crop_flip' (random crop from the image zero-padded by ``pad`` on
  each side, offsets uniform in [0, 2 pad], then a horizontal flip with
  probability 1/2), 'crop' (the crop only) and 'none' (``images / 255``).
  The result is a deterministic function of ``key``, whatever the sharding
  of ``images`` (Auto or Explicit mesh axes).
  """
  return augment_with(draw_augmentation(key, images, mode=mode, pad=pad), images)


def augment_with(aug: Augmentation, images: jax.Array) -> jax.Array:
  """`images` (pixel values in [0, 255]) as float32 in [0, 1], cropped and flipped by `aug`."""
  images = jnp.asarray(images).astype(jnp.float32) / 255.0
  if aug.mode == 'none':
    return images
  return _flip(_pad_crop(images, aug.offsets, aug.pad), aug.flips)


def stored_frame_shape(image_shape: tuple[int, int, int], mode: str,
                       pad: int = 4) -> tuple[int, int, int]:
  """Shape of a per-example tensor kept across epochs in the padded frame of `mode`.

  Per-example state that lives in image space (FGSM-MEP's prior perturbation,
  ATAS's previous perturbation) is stored on the zero-padded canvas from which
  crops are taken, so that it follows each epoch's crop and flip (as
  ``HuangZhiChao95/ATAS data_aug.py`` does): `to_batch_frame` reads it,
  `to_stored_frame` writes the visible window back.
  """
  p = 0 if mode == 'none' else pad
  return (image_shape[0] + 2 * p, image_shape[1] + 2 * p, image_shape[2])


def to_batch_frame(stored: jax.Array, aug: Augmentation) -> jax.Array:
  """The window of each stored (N, H + 2p, W + 2p, C) tensor that this batch's images show."""
  height, width = stored.shape[1] - 2 * aug.pad, stored.shape[2] - 2 * aug.pad
  return _flip(_crop(stored, aug.offsets, (height, width)), aug.flips)


def to_stored_frame(stored: jax.Array, batch: jax.Array, aug: Augmentation) -> jax.Array:
  """`stored` with each example's visible window replaced by `batch` (un-flipped)."""
  def place(canvas: jax.Array, window: jax.Array, offset: jax.Array) -> jax.Array:
    return lax.dynamic_update_slice(canvas, window, (offset[0], offset[1], 0))

  return jax.vmap(place)(stored, _flip(batch, aug.flips), aug.offsets)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places each leaf of a pytree of global host arrays on ``mesh``, split on axis 'data'.

  The leading axis of every leaf is the batch axis. With several processes,
  every process passes the same global batch (the data order is a function of
  the seed and the epoch) and puts on its own devices only the rows they hold.
  """
  sharding = NamedSharding(mesh, PartitionSpec('data'))
  num_shards = mesh.shape['data']

  def put(x: Any) -> jax.Array:
    shape = np.shape(x)
    if not shape or shape[0] % num_shards:
      raise ValueError(
          f'batch leaf of shape {shape} cannot be split over mesh axis \'data\' of size '
          f'{num_shards}: make the batch size a multiple of the device count')
    if jax.process_count() > 1:
      return jax.make_array_from_callback(shape, sharding, lambda index: x[index])
    return jax.device_put(x, sharding)

  return jax.tree.map(put, batch)


def shard_local_batch(batch: Any, mesh: Mesh) -> Any:
  """Places each leaf of a pytree of this process's rows of a global batch on ``mesh``.

  The streaming path's counterpart of `shard_batch`: each of P processes passes its own
  B / P rows (process p: rows [p B / P, (p + 1) B / P) of the global batch), and
  ``jax.make_array_from_process_local_data`` assembles the global array split on 'data'.
  With one process it is `shard_batch`.
  """
  if jax.process_count() == 1:
    return shard_batch(batch, mesh)
  sharding = NamedSharding(mesh, PartitionSpec('data'))

  def put(x: Any) -> jax.Array:
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(
        sharding, x, (x.shape[0] * jax.process_count(), *x.shape[1:]))

  return jax.tree.map(put, batch)
