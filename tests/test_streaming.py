"""The streaming input path: folder sources, bounded decoding, the grain pipeline (order,
determinism, per-host shares, resume) and the iterator state in the checkpoint."""
import dataclasses
import io
import json
import os
import pickle

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from fat_jax.run.checkpoint import Checkpointer
from fat_jax.data import (DatasetNotFoundError, iterate_batches, load_data, load_dataset,
                          train_batches)
from fat_jax.data import folders, images, loader, stream
from fat_jax.methods import TrainState
from fat_jax.parallel import make_data_mesh

pytest.importorskip('grain')  # the streaming path's extra: pip install 'fat_jax[stream]'
CIFAR_SUBSET = '/work/shared/data/cifar-10-subset'
WNIDS = ('n09999999', 'n01000001', 'n05000000')  # unsorted on purpose


def _image(rng, size=64, mode='RGB'):
  channels = {'RGB': 3, 'L': 1, 'RGBA': 4, 'CMYK': 4}[mode]
  pixels = rng.integers(0, 256, (size, size, channels), np.uint8)
  return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def make_tiny_imagenet(root, per_class=3, n_val=4, seed=0):
  """A Tiny-ImageNet-200 folder: wnids.txt, train/<wnid>/images/*, val/images + annotations."""
  rng = np.random.default_rng(seed)
  base = root / 'tiny-imagenet-200'
  (base / 'val' / 'images').mkdir(parents=True)
  (base / 'wnids.txt').write_text('\n'.join(WNIDS) + '\n')
  for wnid in WNIDS:
    folder = base / 'train' / wnid / 'images'
    folder.mkdir(parents=True)
    for i in range(per_class):
      _image(rng).save(folder / f'{wnid}_{i}.JPEG', quality=95)
  (base / 'train' / WNIDS[0] / f'{WNIDS[0]}_boxes.txt').write_text('not an image')
  lines = []
  for i in range(n_val):
    _image(rng, mode='L' if i == 1 else 'RGB').save(base / 'val' / 'images' / f'val_{i}.JPEG')
    lines.append(f'val_{i}.JPEG\t{WNIDS[i % 3]}\t0\t0\t63\t63')
  (base / 'val' / 'val_annotations.txt').write_text('\n'.join(lines) + '\n')
  return base


def make_image_folder(root, classes=('dog', 'cat'), per_class=2, size=40, seed=0):
  rng = np.random.default_rng(seed)
  for split in ('train', 'val'):
    for c in classes:
      (root / split / c).mkdir(parents=True)
      for i in range(per_class):
        _image(rng, size).save(root / split / c / f'{i}.png')
  return root


def _config(**kw):
  c = ml_collections.ConfigDict(dict(name='tiny_imagenet', dir='', source='auto', n_train=0,
                                     n_test=0, pipeline='auto', workers=0, image_size=0,
                                     max_image_pixels=0))
  c.update(kw)
  return c


# --------------------------------------------------------------------------------- sources


def test_tiny_imagenet_layout_labels_and_order(tmp_path):
  base = make_tiny_imagenet(tmp_path)
  train = folders.tiny_imagenet(str(tmp_path), 'train')
  index = {w: i for i, w in enumerate(sorted(WNIDS))}  # the sorted wnids, as the official code
  expected = [(str(base / 'train' / w / 'images' / f'{w}_{i}.JPEG'), index[w])
              for w in sorted(WNIDS) for i in range(3)]
  assert [train[i] for i in range(len(train))] == expected  # the .txt file is not an image
  val = folders.tiny_imagenet(str(base), 'val')
  assert [os.path.basename(p) for p in val.paths] == [f'val_{i}.JPEG' for i in range(4)]
  assert val.labels.tolist() == [index[WNIDS[i % 3]] for i in range(4)]


def test_tiny_imagenet_refuses_bad_annotations(tmp_path):
  base = make_tiny_imagenet(tmp_path)
  annotations = base / 'val' / 'val_annotations.txt'
  annotations.write_text(annotations.read_text() + f'val_9.JPEG\t{WNIDS[0]}\n')
  with pytest.raises(folders.LayoutError, match='annotates val_9.JPEG'):
    folders.tiny_imagenet(str(tmp_path), 'val')
  annotations.write_text(f'val_0.JPEG\t{WNIDS[0]}\n')
  with pytest.raises(folders.LayoutError, match='val_1.JPEG: not in'):
    folders.tiny_imagenet(str(tmp_path), 'val')
  annotations.write_text('val_0.JPEG\tn00000000\n')
  with pytest.raises(folders.LayoutError, match=':1: expected'):
    folders.tiny_imagenet(str(tmp_path), 'val')


def test_image_folder_labels_by_train_classes_and_refusals(tmp_path):
  root = make_image_folder(tmp_path)
  train, val = folders.image_folder(str(root), 'train'), folders.image_folder(str(root), 'val')
  assert train.classes == ('cat', 'dog') and train.labels.tolist() == [0, 0, 1, 1]
  assert val.labels.tolist() == [0, 0, 1, 1]
  (root / 'val' / 'bird').mkdir()
  with pytest.raises(folders.LayoutError, match="class 'bird' is not among the 2 classes"):
    folders.image_folder(str(root), 'val')
  (root / 'train' / 'bird').mkdir()
  with pytest.raises(folders.LayoutError, match='bird: empty class folder'):
    folders.image_folder(str(root), 'train')


def test_imagenet100_class_list(tmp_path):
  assert len(set(folders.IMAGENET100_WNIDS)) == 100
  root = tmp_path / 'Imagenet-100'
  rng = np.random.default_rng(0)
  for split in ('train', 'val'):
    for w in ('n02869837', 'n01749939', 'n09999999'):  # the last is not in the list
      (root / split / w).mkdir(parents=True)
      _image(rng, 32).save(root / split / w / f'{w}_0.JPEG')
  (root / 'wnids.txt').write_text('n02869837\nn01749939\n')  # AAER's layout: its own list
  train = folders.imagenet100(str(tmp_path), 'train')
  assert train.classes == ('n01749939', 'n02869837') and train.labels.tolist() == [0, 1]
  os.remove(root / 'wnids.txt')  # the default 100 classes: most folders are missing
  with pytest.raises(folders.LayoutError, match='no such folder'):
    folders.imagenet100(str(tmp_path), 'train')


# -------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize('mode', ['L', 'RGBA', 'CMYK'])
def test_decoding_converts_to_rgb(tmp_path, mode):
  image = _image(np.random.default_rng(1), 8, mode)
  path = tmp_path / ('x.png' if mode != 'CMYK' else 'x.JPEG')
  image.save(path)
  with Image.open(path) as reference:
    expected = np.asarray(reference.convert('RGB'))
  np.testing.assert_array_equal(images.decode_image(str(path)), expected)


def test_decoding_refuses_bad_files_with_one_line(tmp_path):
  path = tmp_path / 'a.JPEG'
  _image(np.random.default_rng(0), 64).save(path)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(images.ImageError, match=f'^{path}: not a readable image') as e:
    images.decode_image(str(path))
  assert '\n' not in str(e.value)
  path.write_bytes(b'not an image at all')
  with pytest.raises(images.ImageError, match='not a readable image'):
    images.decode_image(str(path))
  _image(np.random.default_rng(0), 64).save(path)
  with pytest.raises(images.ImageError, match='64x64 image exceeds the cap of 1000 pixels'):
    images.decode_image(str(path), max_pixels=1000)


def test_conversions_to_rgb_are_counted_per_split_and_logged(tmp_path, caplog):
  root = make_image_folder(tmp_path, per_class=3, size=16)
  rng = np.random.default_rng(2)
  _image(rng, 16, 'L').save(root / 'train' / 'cat' / '0.png')
  _image(rng, 16, 'CMYK').save(root / 'train' / 'dog' / '9.jpg')
  _image(rng, 16, 'RGBA').save(root / 'train' / 'dog' / '1.png')
  _image(rng, 16, 'RGB').convert('P').save(root / 'val' / 'dog' / '2.png')
  expected = {}
  for split in ('train', 'val'):  # the modes Pillow reads from each file, counted here
    for path in sorted((root / split).rglob('*')):
      if path.is_file():
        with Image.open(path) as image:
          if image.mode != 'RGB':
            expected.setdefault(split, {}).setdefault(image.mode, 0)
            expected[split][image.mode] += 1
  assert expected == {'train': {'L': 1, 'CMYK': 1, 'RGBA': 1}, 'val': {'P': 1}}
  with caplog.at_level('INFO'):
    data = load_data(_config(name='image_folder', dir=str(root), image_size=16))
  assert data.conversions == {'train': {'CMYK': 1, 'L': 1, 'RGBA': 1}, 'test': {'P': 1}}
  assert ('image_folder: converted to RGB: 3 of 7 train images (CMYK 1, L 1, RGBA 1), '
          '1 of 6 test images (P 1)') in caplog.text
  assert images.count_conversions([str(root / 'val' / 'cat' / '0.png')]) == {}
  assert load_data(_config(name='image_folder', dir=str(root), n_train=3)).conversions[
      'train'] == {'L': 1}  # counted over the subset read: the three files of 'cat'
  (root / 'val' / 'cat' / '0.png').write_bytes(b'not an image')
  with pytest.raises(images.ImageError, match=r'0\.png: not a readable image'):
    load_data(_config(name='image_folder', dir=str(root)))


def test_test_time_resize_and_center_crop_match_torchvision_arithmetic():
  pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)  # H 300, W 400
  image = Image.fromarray(pixels)
  # Resize(256): the shorter side (H) to 256, W to int(256 * 400 / 300) = 341; CenterCrop(224):
  # top = round((256 - 224) / 2) = 16, left = round((341 - 224) / 2) = round(58.5) = 58.
  expected = np.asarray(image.resize((341, 256), Image.BILINEAR))[16:240, 58:282]
  np.testing.assert_array_equal(images.resize_center_crop(image, 256, 224), expected)


def test_random_resized_crop_box_is_inside_and_seeded():
  boxes = [images.resized_crop_box(np.random.default_rng(s), 500, 375) for s in range(50)]
  for top, left, h, w in boxes:
    assert 0 <= top <= 375 - h and 0 <= left <= 500 - w
    assert 0.08 * 500 * 375 * 0.9 <= h * w <= 500 * 375 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
  assert boxes == [images.resized_crop_box(np.random.default_rng(s), 500, 375)
                   for s in range(50)]


# -------------------------------------------------------------------------------- pipeline


def _local_batches(source, transform, batch_size, seed, epochs, shard=(0, 1), workers=0):
  layout = stream.Layout(len(source), batch_size, *shard)
  s = stream.TrainStream(stream.train_dataset(source, transform, layout, seed, epochs),
                         layout.steps, workers)
  return s, [[tuple(np.array(a) for a in b) for b in s.epoch(e)] for e in range(1, epochs + 1)]


def _arrays(n=50, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, 8, 8, 3), np.uint8), rng.integers(0, 10, n).astype(np.int32)


def test_stream_gives_the_in_memory_batches():
  if os.path.isdir(CIFAR_SUBSET):
    data = load_dataset(ml_collections.ConfigDict(dict(name='cifar10', dir=CIFAR_SUBSET,
                                                       n_train=300, n_test=10)))
    x, y = data.train_images, data.train_labels
  else:
    x, y = _arrays(300)
  _, streamed = _local_batches(stream.ArraySource(x, y), stream.HostTransform('none', 32 if
                               x.shape[1] == 32 else 8), 64, 3, 2)
  for epoch in (1, 2):
    memory = list(iterate_batches(x, y, 64, 3, epoch))
    assert len(memory) == len(streamed[epoch - 1]) == 4
    for (i, a, b), (j, c, d) in zip(memory, streamed[epoch - 1]):
      np.testing.assert_array_equal(i, j)
      np.testing.assert_array_equal(a, c)
      np.testing.assert_array_equal(b, d)


def test_per_host_shares_are_disjoint_and_cover_each_global_batch():
  x, y = _arrays(50)
  source, transform = stream.ArraySource(x, y), stream.HostTransform('none', 8)
  _, whole = _local_batches(source, transform, 12, 0, 2)
  _, host0 = _local_batches(source, transform, 12, 0, 2, shard=(0, 2))
  _, host1 = _local_batches(source, transform, 12, 0, 2, shard=(1, 2))
  for e in range(2):
    for w, a, b in zip(whole[e], host0[e], host1[e]):
      assert not set(a[0]) & set(b[0])
      np.testing.assert_array_equal(np.concatenate([a[0], b[0]]), w[0])
      np.testing.assert_array_equal(np.concatenate([a[1], b[1]]), w[1])
  with pytest.raises(ValueError, match='not divisible by the 5 hosts'):
    stream.Layout(50, 12, 0, 5)


def test_tiny_imagenet_stream_is_deterministic_and_augments_per_epoch(tmp_path):
  make_tiny_imagenet(tmp_path)
  data = load_data(_config(dir=str(tmp_path)))
  assert data.info.num_classes == 200 and data.num_train == 9
  args = (data.train, data.transform, 4, 7, 2)
  _, a = _local_batches(*args)
  _, b = _local_batches(*args)
  for ea, eb in zip(a, b):
    for ba, bb in zip(ea, eb):
      for u, v in zip(ba, bb):
        np.testing.assert_array_equal(u, v)
  images0, labels0 = a[0][0][1], a[0][0][2]
  assert images0.shape == (4, 64, 64, 3) and images0.dtype == np.uint8
  # Each example is its decoded file, cropped from the 8-padded image and maybe flipped.
  index = int(a[0][0][0][0])
  decoded = images.decode_image(data.train.paths[index])
  rng = np.random.default_rng((7, 1, index))
  top, left = rng.integers(0, 17, size=2)
  crop = np.pad(decoded, ((8, 8), (8, 8), (0, 0)))[top:top + 64, left:left + 64]
  np.testing.assert_array_equal(images0[0], crop[:, ::-1] if rng.random() < 0.5 else crop)
  assert labels0[0] == data.train.labels[index]
  test_x, test_y = data.test_subset(3)
  np.testing.assert_array_equal(test_x[1], np.repeat(
      images.decode_image(data.test.paths[1])[..., :1], 3, axis=-1))  # grayscale → RGB
  np.testing.assert_array_equal(test_y, data.test.labels[:3])


def test_monitor_reads_a_streamed_test_set_batch_by_batch_with_the_same_flags(tmp_path):
  """`test_batches` (the monitor's and the final evaluation's points): the images are decoded
  per slice, equal to `test_subset`'s, and the monitor's flags over them equal its flags over
  the decoded arrays."""
  import jax  # pylint: disable=import-outside-toplevel
  from fat_jax.evaluate import PGDSettings, evaluate_robustness
  from fat_jax.methods import init_train_state
  from fat_jax.models import build_model
  make_tiny_imagenet(tmp_path, n_val=5)
  data = load_data(_config(dir=str(tmp_path)))
  view, labels = data.test_batches(0)
  arrays, array_labels = data.test_subset(0)
  assert isinstance(view, stream.TestImages) and len(view) == 5
  np.testing.assert_array_equal(labels, array_labels)
  for lo, hi in ((0, 5), (1, 3), (3, 9), (4, 4)):
    np.testing.assert_array_equal(view[lo:hi], arrays[lo:hi])
  with pytest.raises(TypeError, match='contiguous slices'):
    view[[0, 2]]  # pylint: disable=pointless-statement
  model = build_model(ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2)), data.info)
  ts = init_train_state(model, jax.random.key(0))
  settings = PGDSettings(eps=8 / 255, steps=2, restarts=1, step_size=2 / 255)
  run = lambda x: evaluate_robustness(model, ts.params, ts.batch_stats, x, labels, settings,
                                      mesh=make_data_mesh(), batch_size=2, progress=False)
  streamed, held = run(view), run(arrays)
  for key in ('clean', 'fgsm', 'pgd'):
    np.testing.assert_array_equal(streamed['flags'][key], held['flags'][key])


def test_resume_from_the_saved_state_gives_the_same_batches():
  x, y = _arrays(40)
  source, transform = stream.ArraySource(x, y), stream.HostTransform('none', 8)
  _, whole = _local_batches(source, transform, 8, 1, 3)
  layout = stream.Layout(40, 8)
  first = stream.TrainStream(stream.train_dataset(source, transform, layout, 1, 3), layout.steps)
  list(first.epoch(1))
  state = json.loads(json.dumps(first.state()))
  resumed = stream.TrainStream(stream.train_dataset(source, transform, layout, 1, 3),
                               layout.steps)
  with pytest.raises(ValueError, match='the stream is at epoch 1, not 2'):
    next(resumed.epoch(2))
  resumed.restore(state)
  for epoch in (2, 3):
    for (i, a, _), (j, b, _) in zip(resumed.epoch(epoch), whole[epoch - 1]):
      np.testing.assert_array_equal(i, j)
      np.testing.assert_array_equal(a, b)


def test_worker_processes_give_the_same_batches(tmp_path):
  make_tiny_imagenet(tmp_path)
  data = load_data(_config(dir=str(tmp_path)))
  _, serial = _local_batches(data.train, data.transform, 4, 0, 1)
  s, parallel = _local_batches(data.train, data.transform, 4, 0, 1, workers=2)
  for a, b in zip(serial[0], parallel[0]):
    for u, v in zip(a, b):
      np.testing.assert_array_equal(u, v)
  assert s.state()['epoch'] == 1


def test_checkpoint_holds_the_iterator_state(tmp_path):
  x, y = _arrays(40)
  data = loader.StreamingDataset(stream.ArraySource(x, y), stream.ArraySource(x, y),
                                 stream.HostTransform('none', 8), None)
  batches = train_batches(data, batch_size=8, seed=0, num_epochs=2, mesh=make_data_mesh())
  list(batches.epoch(1))
  state = TrainState(jnp.int32(5), {'w': jnp.ones(3)}, {}, {'m': jnp.zeros(3)})
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(1, state, batches.state())
    checkpointer.save(2, state)
    assert checkpointer.data_state(1) == batches.state()
    assert checkpointer.data_state(2) is None
    assert checkpointer.verify(1)
    assert checkpointer.restore(1, state).step == 5


def test_load_data_choices_and_refusals(tmp_path):
  with pytest.raises(ValueError, match="unknown data.pipeline 'fast'"):
    load_data(_config(pipeline='fast'))
  with pytest.raises(ValueError, match="tiny_imagenet is read by the streaming path"):
    load_data(_config(pipeline='memory'))
  with pytest.raises(DatasetNotFoundError, match='tiny-imagenet-200.zip'):
    load_data(_config())
  root = make_image_folder(tmp_path)
  data = load_data(_config(name='image_folder', dir=str(root), image_size=32, n_train=3))
  assert data.info.num_classes == 2 and data.info.image_shape == (32, 32, 3)
  assert data.num_train == 3 and data.transform.resize == 37
  x, y = data.test_subset(0)
  assert x.shape == (4, 32, 32, 3) and y.tolist() == [0, 0, 1, 1]


@pytest.mark.slow  # ~ 50 s on 2 shared cores
def test_training_on_the_stream_resumes_bit_exactly(tmp_path):
  """A run of two epochs on a Tiny-ImageNet folder, and the same run stopped after epoch 1
  (its epoch-2 checkpoint and record gone) and resumed: the same final weights."""
  import shutil  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from fat_jax.config import default_config  # pylint: disable=import-outside-toplevel
  from fat_jax.methods import init_train_state  # pylint: disable=import-outside-toplevel
  from fat_jax.models import build_model  # pylint: disable=import-outside-toplevel
  from fat_jax.run import run_log  # pylint: disable=import-outside-toplevel
  from fat_jax.run.train import train_and_evaluate  # pylint: disable=import-outside-toplevel
  make_tiny_imagenet(tmp_path / 'data', per_class=4)
  c = default_config()
  c.data.name, c.data.dir = 'tiny_imagenet', str(tmp_path / 'data')
  c.model.name, c.model.width, c.model.depth = 'cnn', 4, 2
  c.eps, c.batch_size, c.num_epochs = 0.1, 4, 2
  c.eval.n = c.eval.monitor_n = c.eval.batch_size = 4
  c.eval.pgd_steps, c.eval.pgd_restarts, c.eval.monitor_pgd_steps = 2, 1, 2
  c.progress = c.report = False
  whole = str(tmp_path / 'whole')
  train_and_evaluate(c, whole)
  cut = str(tmp_path / 'cut')
  shutil.copytree(whole, cut)
  shutil.rmtree(os.path.join(cut, 'checkpoints', '2'))
  metrics = os.path.join(cut, run_log.METRICS)
  with open(metrics) as f:
    lines = f.readlines()
  with open(metrics, 'w') as f:
    f.writelines(lines[:1])
  train_and_evaluate(c, cut)
  data = load_data(c.data)
  like = init_train_state(build_model(c.model, data.info), jax.random.key(0))
  states = []
  for workdir in (whole, cut):
    with Checkpointer(workdir) as checkpointer:
      assert checkpointer.data_state(2)['epoch'] == 2
      states.append(checkpointer.restore(2, like))
  for a, b in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # ~ 2 min: three launches
def test_two_processes_streaming_train_like_one_in_memory(tmp_path):
  """A 2-process run on localhost (one CPU device each) with the streaming path, each process
  reading only its rows of every global batch, against a 1-process in-memory run of the same
  config: the same final weights (to float tolerance: the collectives sum in another order)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from tests.fixtures import write_idx_dir  # pylint: disable=import-outside-toplevel
  from tests.test_parallel import (  # pylint: disable=import-outside-toplevel
      CONFIG, ROOT, final_params, free_port)
  data_dir = write_idx_dir(str(tmp_path / 'fmnist'), n_train=64, n_test=16)
  config = tmp_path / 'tiny.py'
  config.write_text(CONFIG.format(data_dir=data_dir))
  launch = [sys.executable, os.path.join(ROOT, 'launch.py'), f'--config={config}']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  single = subprocess.run(launch + [f'--workdir={tmp_path / "memory"}',
                                    '--config.data.pipeline=memory'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  port, workdir = free_port(), tmp_path / 'stream'
  procs = [subprocess.Popen(launch + [f'--workdir={workdir}', '--config.data.pipeline=stream',
                                      f'--config.distributed.coordinator_address=localhost:{port}',
                                      '--config.distributed.num_processes=2',
                                      f'--config.distributed.process_id={i}'],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in (0, 1)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  for x, y in zip(final_params(str(tmp_path / 'memory')), final_params(str(workdir))):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)


MEMORY_RUN = '''
import sys
from fat_jax.config import default_config
from fat_jax.run.train import train_and_evaluate
c = default_config()
c.data.name, c.data.dir, c.data.image_size = 'image_folder', sys.argv[1], 32
c.model.name, c.model.width, c.model.depth = 'cnn', 4, 2
c.eps, c.batch_size, c.num_epochs, c.progress = 0.1, 50, 1, False
c.eval.n = c.eval.monitor_n = c.eval.batch_size = 10
c.eval.pgd_steps, c.eval.pgd_restarts, c.eval.monitor_pgd_steps = 1, 1, 1
train_and_evaluate(c, sys.argv[2])
# VmHWM: this program's peak RSS (getrusage's ru_maxrss would also count the parent's pages
# at the fork before exec, which is pytest's size).
with open('/proc/self/status') as f:
  print('peak_rss_kib', next(line.split()[1] for line in f if line.startswith('VmHWM:')))
'''


@pytest.mark.slow  # ~ 20 s: writes and streams 2000 JPEGs
def test_streaming_a_folder_larger_than_the_memory_budget(tmp_path):
  """One epoch over 2000 JPEGs of 500×375 (1.1 GB of decoded pixels, more than the 1 GiB
  budget for the whole process) trains within the budget: nothing holds the data set."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  tile = rng.integers(0, 256, (375, 500, 3), np.uint8)
  for i in range(2000):
    split = 'val' if i < 10 else 'train'
    folder = tmp_path / 'data' / split / f'c{i % 2}'
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.roll(tile, i, axis=1)).save(folder / f'{i}.JPEG', quality=90)
  decoded = 1990 * 375 * 500 * 3
  assert decoded > 2 ** 30
  done = subprocess.run([sys.executable, '-c', MEMORY_RUN, str(tmp_path / 'data'),
                         str(tmp_path / 'run')], capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert done.returncode == 0, done.stderr[-3000:]
  peak = int(done.stdout.split('peak_rss_kib')[1]) * 1024
  assert peak < 2 ** 30, f'peak RSS {peak / 2 ** 20:.0f} MiB'


# ------------------------------------------------------------------------- TFDS, streamed


def make_tfds(root, dataset_name, sizes, classes=3, seed=0):
  """A real prepared TFDS data set `dataset_name` in `root` (array_record files written by TFDS):
  an 'image' feature (PNG bytes, RGB) and a 'label' ClassLabel, splits 'train' and
  'validation' of the (height, width) image sizes `sizes` (fixed if all are equal and the
  feature says so)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('array_record')
  shape = (*sizes['train'][0], 3) if len({*sizes['train'], *sizes['validation']}) == 1 else (
      None, None, 3)

  class ImagesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = dataset_name
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=shape),
          'label': tfds.features.ClassLabel(num_classes=classes)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in sizes}

    def _generate_examples(self, split):
      rng = np.random.default_rng((seed, len(split)))
      for i, size in enumerate(sizes[split]):
        encoded = io.BytesIO(b'not an image')  # size None: a record that does not decode
        if size is not None:
          encoded = io.BytesIO()
          Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(encoded, format='PNG')
        yield f'{split}{i}', {'image': encoded.getvalue(), 'label': i % classes}

  ImagesBuilder(data_dir=str(root), file_format='array_record').download_and_prepare()
  return {split: tfds.data_source(dataset_name, split=split, data_dir=str(root))
          for split in sizes}


def test_tfds_fixed_size_images_stream_with_crop_and_flip(tmp_path):
  """16×16 images: RandomCrop(16, padding=2) + flip for training, the image itself for test;
  every training image is a window of its TFDS record (decoded by TFDS) padded by 2."""
  records = make_tfds(tmp_path, 'fixed_images', {'train': [(16, 16)] * 6,
                                                 'validation': [(16, 16)] * 3})
  data = load_data(_config(name='fixed_images', source='tfds', dir=str(tmp_path)))
  assert (data.info.num_classes, data.info.image_shape, data.info.augment) == (3, (16, 16, 3),
                                                                             'none')
  assert (data.transform.kind, data.transform.pad, data.num_train) == ('crop_flip', 2, 6)
  test_x, test_y = data.test_subset(0)
  np.testing.assert_array_equal(test_x, np.stack([r['image'] for r in records['validation']]))
  np.testing.assert_array_equal(test_y, [r['label'] for r in records['validation']])
  _, batches = _local_batches(data.train, data.transform, 3, 5, 2)
  for epoch in batches:
    for indices, batch, labels in epoch:
      for index, image, label in zip(indices, batch, labels):
        record = records['train'][int(index)]
        padded = np.pad(record['image'], ((2, 2), (2, 2), (0, 0)))
        windows = [w for t in range(5) for l in range(5)
                   for w in (padded[t:t + 16, l:l + 16], padded[t:t + 16, l:l + 16][:, ::-1])]
        assert any(np.array_equal(image, w) for w in windows) and label == record['label']
  assert sorted(np.concatenate([i for i, _, _ in batches[0]]).tolist()) == list(range(6))


def test_tfds_images_of_any_size_stream_with_the_imagenet_transforms(tmp_path):
  """Images of several sizes at data.image_size = 8: Resize(9) + CenterCrop(8) for test,
  computed here with PIL from TFDS's own decoding; training crops of the right shape and
  labels, the same on every read; subsets, pickling (grain workers) and refusals."""
  sizes = {'train': [(20, 12), (9, 30), (16, 16), (11, 13), (40, 8)],
           'validation': [(12, 20), (10, 10), (25, 14)]}
  records = make_tfds(tmp_path, 'any_size_images', sizes)
  config = _config(name='any_size_images', source='tfds', dir=str(tmp_path), image_size=8)
  data = load_data(config)
  assert data.info.image_shape == (8, 8, 3) and data.info.num_classes == 3
  assert (data.transform.kind, data.transform.resize) == ('imagenet', 9)
  test_x, _ = data.test_subset(0)
  for got, record in zip(test_x, records['validation']):
    image = Image.fromarray(record['image'])
    w, h = image.size
    new_w, new_h = (9, int(9 * h / w)) if w <= h else (int(9 * w / h), 9)
    top, left = int(round((new_h - 8) / 2.0)), int(round((new_w - 8) / 2.0))
    expected = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))[top:top + 8,
                                                                         left:left + 8]
    np.testing.assert_array_equal(got, expected)
  _, first = _local_batches(data.train, data.transform, 2, 1, 1)
  _, again = _local_batches(data.train, data.transform, 2, 1, 1)
  for (i, a, y), (j, b, _) in zip(first[0], again[0]):
    np.testing.assert_array_equal(i, j)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 8, 8, 3) and a.dtype == np.uint8
    assert y.tolist() == [records['train'][int(k)]['label'] for k in i]
  subset = load_data(_config(**{**config.to_dict(), 'n_train': 3, 'n_test': 2}))
  assert (subset.num_train, len(subset.test)) == (3, 2)
  with pytest.raises(IndexError):
    subset.train[3]
  copy = pickle.loads(pickle.dumps(data.train))
  assert copy[4][0] == data.train[4][0] and copy[4][1] == records['train'][4]['label']
  with pytest.raises(ValueError, match='streaming path'):
    load_data(_config(**{**config.to_dict(), 'pipeline': 'memory'}))
  with pytest.raises(DatasetNotFoundError, match="no prepared TFDS data set 'imagenet2012'"):
    load_data(_config(**{**config.to_dict(), 'name': 'imagenet2012'}))
  with pytest.raises(ValueError, match='unknown data set'):
    load_data(_config(name='imagenet2012'))
  make_tfds(tmp_path, 'bad_images', {'train': [(8, 8), None], 'validation': [(8, 8)]})
  bad = load_data(_config(**{**config.to_dict(), 'name': 'bad_images'}))
  index = next(i for i in range(2) if bad.train[i][0].data == b'not an image')
  with pytest.raises(images.ImageError,
                     match=rf'^bad_images train\[{index}\]: not a readable image'):
    bad.transform(bad.train[index][0], train=True, rng=np.random.default_rng(0))


def test_svhn_recipe_data_flips_as_the_official_loader(tmp_path):
  """data.augment replaces the on-device augmentation of an in-memory (or array-streamed)
  data set: SVHN (crop) with AAER's crop + flip; a host-augmented folder set refuses it."""
  from tests import fixtures
  from fat_jax.recipes import aaer_svhn_config
  root = fixtures.write_svhn_dir(str(tmp_path / 'svhn'))
  config = aaer_svhn_config().data
  config.dir = root
  plain = load_data(_config(name='svhn', dir=root))
  recipe = load_data(config)
  assert plain.info.augment == 'crop' and recipe.info.augment == 'crop_flip'
  assert recipe.info == dataclasses.replace(plain.info, augment='crop_flip')
  np.testing.assert_array_equal(recipe.train_images, plain.train_images)
  streamed = load_data(_config(name='svhn', dir=root, pipeline='stream', augment='crop_flip'))
  assert streamed.info.augment == 'crop_flip' and streamed.transform.kind == 'none'
  with pytest.raises(ValueError, match="unknown data.augment 'flip'"):
    load_data(_config(name='svhn', dir=root, augment='flip'))
  make_tiny_imagenet(tmp_path)
  with pytest.raises(ValueError, match='augmented on the host'):
    load_data(_config(dir=str(tmp_path), augment='crop'))
