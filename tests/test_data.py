"""Data loading (original formats and TFDS), batching, augmentation and sharding."""
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fat_jax import data
from fat_jax.data import sources
from fat_jax.data.pipeline import _pad_crop
from tests import fixtures
from tests.fixtures import TEST_START, pattern_images, pattern_labels


def make_config(name, source='dir', dir=None, n_train=0, n_test=0):
  return ml_collections.ConfigDict(dict(
      name=name, source=source, dir=dir, n_train=n_train, n_test=n_test))


def assert_split(images, labels, start, n, shape, num_classes):
  assert images.dtype == np.uint8 and images.shape == (n, *shape)
  assert labels.dtype == np.int32 and labels.shape == (n,)
  np.testing.assert_array_equal(images, pattern_images(start, n, shape))
  np.testing.assert_array_equal(labels, pattern_labels(start, n, num_classes))


# ------------------------------------------------------------- original formats


def test_cifar10_dir(tmp_path):
  root = fixtures.write_cifar10_dir(str(tmp_path), n_train_per_batch=3, n_test=4)
  ds = data.load_dataset(make_config('cifar10', dir=root))
  assert_split(ds.train_images, ds.train_labels, 0, 15, (32, 32, 3), 10)
  assert_split(ds.test_images, ds.test_labels, TEST_START, 4, (32, 32, 3), 10)
  assert ds.info == data.DATASET_INFOS['cifar10']
  assert ds.info.augment == 'crop_flip' and ds.info.mean == (0.4914, 0.4822, 0.4465)
  # DIR may also be the cifar-10-batches-py folder itself; 'auto' uses a given dir.
  inner = data.load_dataset(make_config(
      'cifar10', source='auto', dir=os.path.join(root, 'cifar-10-batches-py')))
  np.testing.assert_array_equal(inner.train_images, ds.train_images)


def test_cifar10_subset_is_first_examples(tmp_path):
  root = fixtures.write_cifar10_dir(str(tmp_path), n_train_per_batch=3, n_test=4)
  ds = data.load_dataset(make_config('cifar10', dir=root, n_train=5, n_test=2))
  assert_split(ds.train_images, ds.train_labels, 0, 5, (32, 32, 3), 10)
  assert_split(ds.test_images, ds.test_labels, TEST_START, 2, (32, 32, 3), 10)
  with pytest.raises(ValueError, match='n_train=16'):
    data.load_dataset(make_config('cifar10', dir=root, n_train=16))


def test_cifar100_dir(tmp_path):
  root = fixtures.write_cifar100_dir(str(tmp_path), n_train=7, n_test=3)
  ds = data.load_dataset(make_config('cifar100', dir=root, n_test=2))
  assert_split(ds.train_images, ds.train_labels, 0, 7, (32, 32, 3), 100)
  assert_split(ds.test_images, ds.test_labels, TEST_START, 2, (32, 32, 3), 100)
  assert ds.info.num_classes == 100


@pytest.mark.parametrize('gz', [True, False])
@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist'])
def test_idx_dir(tmp_path, name, gz):
  root = fixtures.write_idx_dir(str(tmp_path), n_train=6, n_test=5, gz=gz)
  ds = data.load_dataset(make_config(name, dir=root, n_train=4))
  assert_split(ds.train_images, ds.train_labels, 0, 4, (28, 28, 1), 10)
  assert_split(ds.test_images, ds.test_labels, TEST_START, 5, (28, 28, 1), 10)
  assert ds.info.mean == () and ds.info.augment == 'none'


def test_svhn_dir(tmp_path):
  pytest.importorskip('scipy')
  root = fixtures.write_svhn_dir(str(tmp_path), n_train=6, n_test=5)
  ds = data.load_dataset(make_config('svhn', dir=root))
  assert_split(ds.train_images, ds.train_labels, 0, 6, (32, 32, 3), 10)
  assert_split(ds.test_images, ds.test_labels, TEST_START, 5, (32, 32, 3), 10)
  assert 0 in ds.train_labels and ds.info.augment == 'crop'  # stored as 10


@pytest.mark.parametrize('corrupt', ['magic', 'truncated', 'truncated_gz'])
def test_corrupt_idx_raises_value_error(tmp_path, corrupt):
  root = fixtures.write_idx_dir(str(tmp_path), gz=corrupt == 'truncated_gz')
  name = 'train-images-idx3-ubyte' + ('.gz' if corrupt == 'truncated_gz' else '')
  path = os.path.join(root, name)
  with open(path, 'rb') as f:
    raw = f.read()
  with open(path, 'wb') as f:
    f.write({'magic': b'\x00\x00\x08\x02' + raw[4:],
             'truncated': raw[:-10],
             'truncated_gz': raw[:len(raw) // 2]}[corrupt])
  with pytest.raises(ValueError, match='train-images-idx3-ubyte'):
    data.load_dataset(make_config('mnist', dir=root))


def test_idx_label_count_mismatch(tmp_path):
  root = fixtures.write_idx_dir(str(tmp_path), gz=False)
  with open(os.path.join(root, 'train-labels-idx1-ubyte'), 'wb') as f:
    f.write(fixtures.idx_bytes(pattern_labels(0, 3, 10).astype(np.uint8)))
  with pytest.raises(ValueError, match='labels'):
    data.load_dataset(make_config('mnist', dir=root))


@pytest.mark.parametrize('name, hint', [
    ('cifar10', 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'),
    ('cifar100', 'cifar-100-python.tar.gz'),
    ('svhn', 'train_32x32.mat'),
    ('mnist', 'train-images-idx3-ubyte.gz'),
    ('fashion_mnist', 'apt-get install dataset-fashion-mnist'),
])
def test_missing_dataset_names_both_ways(tmp_path, name, hint):
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load_dataset(make_config(name, dir=str(tmp_path)))
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError)
  for part in (hint, '--config.data.dir=', '--config.data.source=tfds', str(tmp_path)):
    assert part in message


def test_auto_without_dir_or_tfds_copy_raises(monkeypatch):
  monkeypatch.setattr(sources, '_tfds_prepared', lambda name: False)
  with pytest.raises(data.DatasetNotFoundError, match='cifar-10-python.tar.gz'):
    data.load_dataset(make_config('cifar10', source='auto'))
  with pytest.raises(data.DatasetNotFoundError, match='no data.dir'):
    data.load_dataset(make_config('cifar10', source='dir', dir=''))


def test_unknown_name_or_source():
  with pytest.raises(ValueError, match='cifar10.*fashion_mnist'):
    data.load_dataset(make_config('imagenet'))
  with pytest.raises(ValueError, match='auto'):
    data.load_dataset(make_config('cifar10', source='web', dir='/nonexistent'))


@pytest.mark.skipif(not os.path.isdir(data.FASHION_MNIST_DEBIAN_DIR),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_mnist_debian_package():
  ds = data.load_dataset(make_config('fashion_mnist', source='auto'))
  assert ds.train_images.shape == (60000, 28, 28, 1)
  assert ds.test_images.shape == (10000, 28, 28, 1)
  assert ds.train_images.dtype == np.uint8 and ds.train_images.max() == 255
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)


# ------------------------------------------------------------------------ TFDS


@pytest.mark.parametrize('name', list(data.DATASET_INFOS))
def test_tfds_source_mock(name):
  tfds = pytest.importorskip('tensorflow_datasets')
  info = data.DATASET_INFOS[name]
  with tfds.testing.mock_data(num_examples=6):
    ds = data.load_dataset(make_config(name, source='tfds', n_train=4))
  assert ds.train_images.shape == (4, *info.image_shape)
  assert ds.test_images.shape == (6, *info.image_shape)
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  assert 0 <= ds.train_labels.min() and ds.train_labels.max() < info.num_classes


def test_auto_uses_prepared_tfds_copy(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(sources, '_tfds_prepared', lambda name: name == 'cifar10')
  with tfds.testing.mock_data(num_examples=3):
    ds = data.load_dataset(make_config('cifar10', source='auto'))
  assert ds.train_images.shape == (3, 32, 32, 3)


def test_tfds_source_without_tfds_says_which_extra_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # import raises ImportError
  with pytest.raises(ImportError, match=re.escape("pip install 'fat_jax[tfds]'")):
    data.load_dataset(make_config('cifar10', source='tfds'))


# -------------------------------------------------------------------- batching


def test_epoch_permutation():
  p = data.epoch_permutation(100, seed=1, epoch=0)
  np.testing.assert_array_equal(p, data.epoch_permutation(100, seed=1, epoch=0))
  np.testing.assert_array_equal(np.sort(p), np.arange(100))
  assert not np.array_equal(p, data.epoch_permutation(100, seed=1, epoch=1))
  assert not np.array_equal(p, data.epoch_permutation(100, seed=2, epoch=0))


@pytest.mark.parametrize('drop_remainder, steps, seen', [(True, 3, 9), (False, 4, 10)])
def test_iterate_batches_covers_epoch_once(drop_remainder, steps, seen):
  images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  labels = np.arange(10, dtype=np.int32)
  batches = list(data.iterate_batches(images, labels, 3, seed=0, epoch=2,
                                      drop_remainder=drop_remainder))
  assert len(batches) == steps == data.steps_per_epoch(10, 3, drop_remainder)
  indices = np.concatenate([b[0] for b in batches])
  assert len(indices) == len(set(indices.tolist())) == seen
  np.testing.assert_array_equal(indices, data.epoch_permutation(10, 0, 2)[:seen])
  for idx, x, y in batches:
    np.testing.assert_array_equal(x, images[idx])
    np.testing.assert_array_equal(y, labels[idx])
  ordered = list(data.iterate_batches(images, labels, 4, 0, 0, shuffle=False))
  np.testing.assert_array_equal(np.concatenate([b[0] for b in ordered]), np.arange(8))


# ---------------------------------------------------------------- augmentation


def random_images(n=64, size=8):
  """Asymmetric images with no zero pixel, so padding and flips are visible."""
  return np.random.default_rng(0).integers(1, 256, (n, size, size, 3), dtype=np.uint8)


def crop_offset(out, image, pad):
  """The (dy, dx) at which ``out`` is a window of the zero-padded ``image``, or None."""
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  h, w = image.shape[:2]
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      if np.array_equal(padded[dy:dy + h, dx:dx + w], out):
        return dy, dx
  return None


@pytest.mark.parametrize('mode', data.AUGMENT_MODES)
def test_augment_range_shape_determinism(mode):
  x = random_images()
  key = jax.random.key(0)
  out = data.augment(key, x, mode=mode)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
  np.testing.assert_array_equal(out, data.augment(key, x, mode=mode))
  in_jit = jax.jit(lambda k, im: data.augment(k, im, mode=mode))(key, x)
  np.testing.assert_array_equal(out, in_jit)
  if mode != 'none':
    assert not np.array_equal(out, data.augment(jax.random.key(1), x, mode=mode))


def test_augment_none_is_division_by_255():
  x = random_images()
  expected = x.astype(np.float32) / 255  # XLA multiplies by 1/255: equal to 1 ulp
  for images in (x, x.astype(np.float32)):
    out = data.augment(jax.random.key(0), images, mode='none')
    np.testing.assert_allclose(out, expected, rtol=2e-7, atol=0)
  with pytest.raises(ValueError, match='crop_flip'):
    data.augment(jax.random.key(0), x, mode='rotate')


def test_pad_crop_offsets():
  x = jnp.asarray(random_images(n=2), jnp.float32)
  same = _pad_crop(x, jnp.array([[4, 4], [4, 4]]), pad=4)
  np.testing.assert_array_equal(same, x)
  corner = _pad_crop(x, jnp.array([[0, 0], [8, 8]]), pad=4)
  assert not corner[0, :4].any() and not corner[0, :, :4].any()  # top-left padding
  np.testing.assert_array_equal(corner[0, 4:, 4:], x[0, :4, :4])
  np.testing.assert_array_equal(corner[1, :4, :4], x[1, 4:, 4:])
  assert not corner[1, 4:].any() and not corner[1, :, 4:].any()  # bottom-right padding


def test_crop_is_window_of_zero_padded_image():
  x = random_images()
  pad = 2
  out = np.asarray(data.augment(jax.random.key(3), x, mode='crop', pad=pad)) * 255
  offsets = [crop_offset(np.rint(o).astype(np.uint8), image, pad) for o, image in zip(out, x)]
  assert None not in offsets
  assert len(set(offsets)) > 5  # offsets vary per example
  assert {dy for dy, _ in offsets} <= set(range(2 * pad + 1))


def test_crop_flip_flips_about_half():
  x = random_images()
  out = np.rint(np.asarray(data.augment(jax.random.key(0), x, mode='crop_flip', pad=0)) * 255)
  same = np.array([np.array_equal(o, im) for o, im in zip(out, x)])
  flipped = np.array([np.array_equal(o, im[:, ::-1]) for o, im in zip(out, x)])
  assert np.all(same ^ flipped)
  assert 10 < flipped.sum() < 54


@pytest.mark.parametrize('mode', data.AUGMENT_MODES)
def test_stored_frame_follows_crop_and_flip(mode):
  """Per-example state on the padded canvas: read as the batch sees it, written back in place."""
  x = random_images(n=16)
  aug = data.draw_augmentation(jax.random.key(5), x, mode=mode, pad=2)
  shape = data.stored_frame_shape(x.shape[1:], mode, pad=2)
  assert shape == ((8, 8, 3) if mode == 'none' else (12, 12, 3))
  p = (shape[0] - 8) // 2
  scaled = data.augment(jax.random.key(0), x, mode='none')
  canvas = np.pad(scaled, ((0, 0), (p, p), (p, p), (0, 0)))
  # The stored padded images, read in the batch frame, are the augmented images.
  np.testing.assert_array_equal(data.to_batch_frame(jnp.asarray(canvas), aug),
                                data.augment_with(aug, x))
  old = jnp.asarray(np.random.default_rng(1).normal(size=(16, *shape)), jnp.float32)
  new = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
  written = data.to_stored_frame(old, new, aug)
  np.testing.assert_array_equal(data.to_batch_frame(written, aug), new)
  # Outside each example's window the stored values are kept.
  window = data.to_stored_frame(jnp.zeros_like(old), jnp.ones_like(new), aug) > 0
  np.testing.assert_array_equal(np.where(window, 0, written), np.where(window, 0, old))
  assert int(window.sum()) == new.size


# -------------------------------------------------------------------- sharding


def test_shard_batch_single_device():
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  batch = {'x': np.arange(12, dtype=np.float32).reshape(4, 3), 'y': np.arange(4)}
  out = data.shard_batch(batch, mesh)
  assert out['x'].sharding == jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  np.testing.assert_array_equal(out['x'], batch['x'])
  with pytest.raises(ValueError, match='data'):
    data.shard_batch({'scalar': np.float32(1)}, mesh)


def test_shard_batch_two_devices():
  """2 forced CPU devices (fresh process for XLA_FLAGS): split, odd batch, sharded augment."""
  script = textwrap.dedent('''
      import jax, numpy as np, pytest
      from fat_jax.data import augment, shard_batch
      mesh = jax.make_mesh((2,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
      x = shard_batch(np.arange(8).reshape(4, 2), mesh)
      assert [s.data.shape for s in x.addressable_shards] == [(2, 2), (2, 2)]
      np.testing.assert_array_equal(x, np.arange(8).reshape(4, 2))
      with pytest.raises(ValueError, match='size 2'):
        shard_batch((np.zeros((3, 2)),), mesh)
      images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
      expected = augment(jax.random.key(0), images, mode='crop_flip')
      for axis_type in jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit:
        mesh = jax.make_mesh((2,), ('data',), axis_types=(axis_type,))
        out = augment(jax.random.key(0), shard_batch(images, mesh), mode='crop_flip')
        np.testing.assert_array_equal(out, expected)
        assert out.sharding.spec[0] == 'data'
  ''')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', script], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
