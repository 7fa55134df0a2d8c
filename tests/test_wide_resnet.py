"""WideResNet (official and DeepMind's): sizes, LAP's layer order, init, nodes, dropout, the
``wrn`` / ``dm_wrn`` / bn-free ``locuslab`` conversions against a float64 NumPy transcription
of the PyTorch forwards, one epoch of training, an AutoAttack evaluation and the recipes.

State_dicts carry the official key names, shapes and registration order
(``yaodongyu/TRADES models/wideresnet.py``, RobustBench ``dm_wide_resnet.py``).
"""
import importlib
import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import from_workdir
from fat_jax.config import default_config
from fat_jax.data import load_dataset
from fat_jax.formats import convert as convert_lib
from fat_jax.methods import resolve_method
from fat_jax.models import build_model
from fat_jax.models.wide_resnet import WideResNet
from fat_jax.run.train import train_and_evaluate
from tests import torch_files
from tests.fixtures import write_cifar10_dir
from tests.test_convert import (CIFAR10_MEAN, CIFAR10_STD, _as64, _blocks, _images, _nchw,
                                _restored_logits, _Weights, batch_norm_eval, conv2d, linear,
                                locuslab_preact_state_dict, relu)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = types.SimpleNamespace(num_classes=10, image_shape=(32, 32, 3), mean=tuple(CIFAR10_MEAN),
                              std=tuple(CIFAR10_STD))


def make(name='wide_resnet', **config):
  return build_model(ml_collections.ConfigDict({'name': name, **config}), CIFAR)


# ------------------------------------------------- state_dicts with the official names and order


class _Shapes(_Weights):
  """`_Weights` that holds zero-size-in-memory broadcast views: shapes of a large network."""

  def __init__(self):
    super().__init__(0)
    self.rng = types.SimpleNamespace(uniform=lambda lo, hi, shape: np.broadcast_to(
        np.float32(0), (shape,) if isinstance(shape, int) else shape))


def _wrn_blocks(depth, widen):
  """(group 1..3, index, in, out) of every block: ``NetworkBlock._make_layer``."""
  widths, n = [16, 16 * widen, 32 * widen, 64 * widen], (depth - 4) // 6
  for g in range(3):
    for i in range(n):
      yield g + 1, i, widths[g] if i == 0 else widths[g + 1], widths[g + 1]


def official_wrn_state_dict(depth, widen, w=None, sub_block1=False, num_classes=10):
  """``WideResNet(depth, num_classes, widen).state_dict()``; `sub_block1`: TRADES' unused
  group, registered after block1."""
  w = w or _Weights(0)
  w.conv('conv1', 16, 3, 3)
  for group in ('block1', 'sub_block1', 'block2', 'block3'):
    if group == 'sub_block1' and not sub_block1:
      continue
    g = 1 if group == 'sub_block1' else int(group[-1])
    for _, i, in_ch, out_ch in (b for b in _wrn_blocks(depth, widen) if b[0] == g):
      block = f'{group}.layer.{i}'
      w.bn(f'{block}.bn1', in_ch)
      w.conv(f'{block}.conv1', out_ch, in_ch, 3)
      w.bn(f'{block}.bn2', out_ch)
      w.conv(f'{block}.conv2', out_ch, out_ch, 3)
      if in_ch != out_ch:
        w.conv(f'{block}.convShortcut', out_ch, in_ch, 1)
  w.bn('bn1', 64 * widen)
  w.linear('fc', num_classes, 64 * widen)
  return w.sd


def dm_wrn_state_dict(depth, widen, w=None, buffers=None):
  """``DMWideResNet(depth=depth, width=widen).state_dict()``; `buffers`: (mean, std)."""
  w = w or _Weights(1)
  if buffers:
    w.sd['mean'] = np.asarray(buffers[0]).reshape(3, 1, 1)
    w.sd['std'] = np.asarray(buffers[1]).reshape(3, 1, 1)
  w.conv('init_conv', 16, 3, 3)
  for g, i, in_ch, out_ch in _wrn_blocks(depth, widen):
    block = f'layer.{g - 1}.block.{i}'
    w.bn(f'{block}.batchnorm_0', in_ch)
    w.conv(f'{block}.conv_0', out_ch, in_ch, 3)
    w.bn(f'{block}.batchnorm_1', out_ch)
    w.conv(f'{block}.conv_1', out_ch, out_ch, 3)
    if in_ch != out_ch:
      w.conv(f'{block}.shortcut', out_ch, in_ch, 1)
  w.bn('batchnorm', 64 * widen)
  w.linear('logits', 10, 64 * widen)
  return w.sd


def _float32(sd):
  return {k: v if v.dtype == np.int64 else v.astype(np.float32) for k, v in sd.items()}


def _parameters(sd):
  """``sum(p.numel() for p in model.parameters())``: weights and biases, no buffers."""
  return sum(math.prod(v.shape) for k, v in sd.items() if k.endswith(('.weight', '.bias')))


def _lap_tensors(sd):
  """LAP's ``utils.diff_in_weights``: state_dict keys of rank > 1 containing 'weight'."""
  return [k for k, v in sd.items() if np.ndim(v) > 1 and 'weight' in k]


# ------------------------------------------------------- the torch forwards, transcribed (NCHW)


def swish(x):
  return x / (1 + np.exp(-x))


def official_wrn_forward(sd, x, act=relu):
  """``WideResNet.forward`` / ``BasicBlock.forward`` (eval mode, no dropout)."""
  out = conv2d(x, sd['conv1.weight'], padding=1)
  depth = 6 * len({k.split('.')[2] for k in sd if k.startswith('block1.layer.')}) + 4
  for g, i, in_ch, out_ch in _wrn_blocks(depth, sd['block1.layer.0.conv1.weight'].shape[0] // 16):
    b, stride = f'block{g}.layer.{i}', (2 if g > 1 and i == 0 else 1)
    if in_ch != out_ch:
      out = act(batch_norm_eval(out, sd, f'{b}.bn1'))  # x = relu1(bn1(x))
      h = out
    else:
      h = act(batch_norm_eval(out, sd, f'{b}.bn1'))
    h = act(batch_norm_eval(conv2d(h, sd[f'{b}.conv1.weight'], stride=stride, padding=1), sd,
                            f'{b}.bn2'))
    h = conv2d(h, sd[f'{b}.conv2.weight'], padding=1)
    out = (out if in_ch == out_ch else conv2d(out, sd[f'{b}.convShortcut.weight'],
                                              stride=stride)) + h
  out = act(batch_norm_eval(out, sd, 'bn1'))
  return linear(out.mean(axis=(2, 3)), sd, 'fc')  # avg_pool2d(out, 8) at 8×8


def avg_pool2d_8_view(out):
  """``F.avg_pool2d(out, 8).view(-1, C)``: 8×8 windows, stride 8, the remainder dropped, and
  torch's row-major view of the (N, C, h, w) result."""
  n, c, height, width = out.shape
  h, w = height // 8, width // 8
  pooled = out[:, :, :8 * h, :8 * w].reshape(n, c, h, 8, w, 8).mean(axis=(3, 5))
  return pooled.reshape(-1, c)


def dm_wrn_forward(sd, x, act=swish, mean=CIFAR10_MEAN, std=CIFAR10_STD, padding=0,
                   pool=avg_pool2d_8_view):
  """``DMWideResNet.forward`` / ``_Block.forward`` (eval mode) on [0, 1] NCHW x; `pool` the
  head's pooling."""
  if padding > 0:
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))  # F.pad(x, (p,) * 4)
  out = conv2d((x - mean[:, None, None]) / std[:, None, None], sd['init_conv.weight'], padding=1)
  depth = 6 * len({k.split('.')[3] for k in sd if k.startswith('layer.0.block.')}) + 4
  for g, i, in_ch, out_ch in _wrn_blocks(depth, sd['layer.0.block.0.conv_0.weight'].shape[0] // 16):
    b, stride = f'layer.{g - 1}.block.{i}', (2 if g > 1 and i == 0 else 1)
    if in_ch != out_ch:
      out = act(batch_norm_eval(out, sd, f'{b}.batchnorm_0'))
      v = out
    else:
      v = act(batch_norm_eval(out, sd, f'{b}.batchnorm_0'))
    pad = (1, 1) if stride == 1 else (0, 1)  # F.pad(v, (1, 1, 1, 1)) / (0, 1, 0, 1)
    v = conv2d(np.pad(v, ((0, 0), (0, 0), pad, pad)), sd[f'{b}.conv_0.weight'], stride=stride)
    v = conv2d(act(batch_norm_eval(v, sd, f'{b}.batchnorm_1')), sd[f'{b}.conv_1.weight'],
               padding=1)
    out = (out if in_ch == out_ch else conv2d(out, sd[f'{b}.shortcut.weight'],
                                              stride=stride)) + v
  out = act(batch_norm_eval(out, sd, 'batchnorm'))
  return linear(pool(out), sd, 'logits')


def preact_no_head_forward(sd, x):
  """locuslab ``PreActResNet.forward`` without the final bn (RobustBench ``Wong2020Fast``)."""
  out = conv2d(x, sd['conv1.weight'], padding=1)
  for block, _, _, stride in _blocks(sd['conv1.weight'].shape[0]):
    pre = relu(batch_norm_eval(out, sd, f'{block}.bn1'))
    shortcut = (conv2d(out, sd[f'{block}.shortcut.0.weight'], stride=stride)
                if f'{block}.shortcut.0.weight' in sd else out)
    o = conv2d(pre, sd[f'{block}.conv1.weight'], stride=stride, padding=1)
    out = conv2d(relu(batch_norm_eval(o, sd, f'{block}.bn2')), sd[f'{block}.conv2.weight'],
                 padding=1) + shortcut
  return linear(out.mean(axis=(2, 3)), sd, 'linear')


def _max_error(workdir, sd_forward):
  x = _images((32, 32, 3), n=3)
  return np.abs(_restored_logits(workdir, x) - sd_forward(_nchw(x))).max()


# ------------------------------------------------------------------------------ the networks


@pytest.mark.parametrize('depth, widen, params, lap_layers', [
    (34, 10, 46_160_474, 35), (28, 10, 36_479_194, 29)])
def test_official_sizes_and_lap_layer_order(depth, widen, params, lap_layers):
  """Counts of the official file (its shapes, written above) and of the Flax model
  (eval_shape: nothing allocated); LAP's perturbed tensors, in state_dict order, are
  `weight_paths()` one to one."""
  sd = official_wrn_state_dict(depth, widen, _Shapes())
  assert _parameters(sd) == params and len(_lap_tensors(sd)) == lap_layers
  model = make(depth=depth, widen_factor=widen)
  shapes = jax.eval_shape(model.init, jax.random.key(0))[0]
  leaves = jax.tree.leaves(shapes)
  assert sum(math.prod(v.shape) for v in leaves) == params
  assert sum(v.ndim > 1 for v in leaves) == lap_layers
  to_flax = {f'{layer.torch}.weight': (*layer.flax, 'kernel')
             for layer in convert_lib.wide_resnet_layers(depth, widen)}
  assert model.weight_layer_order(shapes) == [to_flax[k] for k in _lap_tensors(sd)]


@pytest.mark.parametrize('depth, widen, params', [(28, 10, 36_479_194), (70, 16, 266_796_506)])
def test_dm_sizes(depth, widen, params):
  sd = dm_wrn_state_dict(depth, widen, _Shapes())
  assert _parameters(sd) == params
  shapes = jax.eval_shape(make('dm_wide_resnet', depth=depth, widen_factor=widen,
                               activation='swish').init, jax.random.key(0))[0]
  assert sum(math.prod(v.shape) for v in jax.tree.leaves(shapes)) == params


@pytest.fixture(scope='module')
def tiny():
  """WRN-10-2 (every group has a 1×1 shortcut) and its initial variables."""
  model = make(depth=10, widen_factor=2)
  return model, *model.init(jax.random.key(0))


def test_official_init(tiny):
  """Conv N(0, 2/(3·3·out)) (fan-out), BN 1 / 0, fc bias 0 and weight U(±1/√in)."""
  _, params, state = tiny
  kernel = np.asarray(params['group3_block0']['conv2']['kernel'])  # 3×3×128×128
  np.testing.assert_allclose(kernel.std(), math.sqrt(2 / (9 * 128)), rtol=0.02)
  assert abs(kernel.mean()) < 0.02 * kernel.std()
  shortcut = np.asarray(params['group2_block0']['shortcut']['kernel'])
  np.testing.assert_allclose(shortcut.std(), math.sqrt(2 / 64), rtol=0.1)
  fc = params['linear']
  assert not np.any(fc['bias']) and np.abs(fc['kernel']).max() <= 1 / math.sqrt(128)
  assert np.abs(fc['kernel']).max() > 0.9 / math.sqrt(128)
  for name in ('bn1', 'bn2'):
    np.testing.assert_array_equal(params['group1_block0'][name]['scale'], 1.0)
    np.testing.assert_array_equal(params['group1_block0'][name]['bias'], 0.0)
  dm = make('dm_wide_resnet', depth=10, widen_factor=2).init(jax.random.key(0))[0]
  kernel = np.asarray(dm['group3_block0']['conv2']['kernel'])  # torch default U(±1/√(9·in))
  assert np.abs(kernel).max() <= 1 / math.sqrt(9 * 128) and np.any(dm['linear']['bias'])


def test_feature_nodes_and_masks(tiny):
  model, params, state = tiny
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  logits, _, features = model.apply(params, state, x, False)
  assert {k: v.shape[1:] for k, v in features.items()} == {
      'A': (32, 32, 16), 'B': (32, 32, 32), 'C': (16, 16, 64), 'D': (8, 8, 128)}
  np.testing.assert_allclose(logits, features['D'].mean((1, 2)) @ params['linear']['kernel'] +
                             params['linear']['bias'], rtol=1e-5, atol=1e-5)
  # A mask of D is the pooled features with that channel zeroed.
  mask = np.ones(128, np.float32)
  mask[5] = 0
  masked = model.apply(params, state, x, False, masks={'D': mask})[0]
  kernel = params['linear']['kernel'].at[5].set(0)
  np.testing.assert_allclose(masked, features['D'].mean((1, 2)) @ kernel, rtol=1e-5, atol=1e-5)
  # In a block whose widths differ the masked node also feeds the 1×1 shortcut: with every
  # channel of C masked, group3_block0 sees zeros and its output is constant over the batch.
  zeros = {'C': np.zeros(64, np.float32)}
  _, _, masked_features = model.apply(params, state, x, False, masks=zeros)
  d = np.asarray(masked_features['D'])
  np.testing.assert_allclose(d[0], d[1], atol=1e-6)
  with pytest.raises(ValueError, match='unknown nodes'):
    model.apply(params, state, x, False, masks={'E': mask})


def test_dropout_in_training_only():
  model = make(depth=10, widen_factor=1, dropout=0.5)
  plain = make(depth=10, widen_factor=1)
  params, state = model.init(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  logits = jax.jit(lambda m, x, train: m.apply(params, state, x, train)[0], static_argnums=(0, 2))
  np.testing.assert_array_equal(logits(model, x, False), logits(plain, x, False))
  with pytest.raises(ValueError, match="RNG stream 'dropout'"):
    logits(model, x, True)
  # The Flax RNG stream 'dropout' draws the masks.
  variables = {'params': params, 'batch_stats': state}
  run = jax.jit(lambda k: model.module.apply(variables, x, train=True,
                                             rngs={'dropout': jax.random.key(k)},
                                             mutable=['batch_stats'])[0][0])
  assert not np.allclose(run(1), run(2), atol=1e-3)
  np.testing.assert_array_equal(run(1), run(1))


def test_bad_sizes_and_options_are_refused():
  with pytest.raises(ValueError, match=r'model.depth of a WideResNet must be 6n \+ 4'):
    make(depth=4)
  with pytest.raises(ValueError, match='model.activation must be one of'):
    make(depth=10, activation='gelu')
  with pytest.raises(ValueError, match='model.dropout'):
    make('dm_wide_resnet', depth=10, dropout=0.3)
  with pytest.raises(ValueError, match='options of'):
    make('preact_resnet18', activation='swish')
  with pytest.raises(ValueError, match='variant'):
    WideResNet(10, variant='tf')


def test_dm_padding_options_are_refused():
  """Odd padding leaves odd sizes at the stride-2 blocks (torch's add fails there too); 16 on
  32×32 leaves a 16×16 final map, which torch's view(-1, C) would spread over the batch."""
  for padding, message in ((1, 'even sizes at its stride-2 blocks'), (16, '16×16 final map')):
    model = make('dm_wide_resnet', depth=10, widen_factor=1, padding=padding)
    with pytest.raises(ValueError, match=message):
      jax.eval_shape(lambda m=model: m.init(jax.random.key(0)))
  with pytest.raises(ValueError, match='model.padding'):
    make('dm_wide_resnet', depth=10, padding=-2)
  with pytest.raises(ValueError, match="option of 'dm_wide_resnet'"):
    make('wide_resnet', depth=10, padding=2)
  with pytest.raises(ValueError, match='model.padding must be'):
    WideResNet(10, depth=10, padding=2)


# ------------------------------------------------------------------------------- conversions


@pytest.mark.parametrize('fmt, depth, widen', [('zip', 10, 2), ('legacy', 16, 1)])
def test_wrn_logits_match_torch_forward(tmp_path, fmt, depth, widen):
  """WRN-10-2 (shortcuts everywhere) with TRADES' sub_block1; WRN-16-1 (group 1 with equal
  widths: raw-x shortcuts), raw pixels as TRADES feeds them."""
  sd = _float32(official_wrn_state_dict(depth, widen, sub_block1=True))
  save = torch_files.save_zip if fmt == 'zip' else torch_files.save_legacy
  path = save(torch_files.state_dict(sd), str(tmp_path / 'wrn.pt'))
  workdir = convert_lib.convert(path, str(tmp_path / 'run'), source='wrn')
  config = from_workdir.get_config(workdir)
  assert (config.model.name, config.model.depth, config.model.widen_factor) == (
      'wide_resnet', depth, widen)
  assert config.model.mean == () and config.eval.robustbench.architecture == (
      f'WideResNet-{depth}-{widen}')
  assert _max_error(workdir, lambda x: official_wrn_forward(_as64(sd), x)) <= 1e-4


def test_dm_wrn_logits_match_torch_forward(tmp_path):
  """Swish, the file's mean/std buffers (CIFAR-100's here), the asymmetric stride-2 pad."""
  mean, std = np.array([0.5071, 0.4865, 0.4409]), np.array([0.2673, 0.2564, 0.2762])
  sd = _float32(dm_wrn_state_dict(10, 2, buffers=(mean, std)))
  path = torch_files.save_zip(torch_files.state_dict(sd), str(tmp_path / 'dm.pt'))
  workdir = convert_lib.convert(path, str(tmp_path / 'run'), source='dm_wrn')
  assert _max_error(workdir, lambda x: dm_wrn_forward(_as64(sd), x, swish, mean, std)) <= 1e-4
  # ReLU (the class default) and no buffers: CIFAR-10's statistics, the file's defaults.
  del sd['mean'], sd['std']
  path = torch_files.save_legacy(torch_files.state_dict(sd), str(tmp_path / 'dm_relu.pt'))
  workdir = convert_lib.convert(path, str(tmp_path / 'run_relu'), source='dm_wrn',
                                activation='relu')
  assert _max_error(workdir, lambda x: dm_wrn_forward(_as64(sd), x, relu)) <= 1e-4
  # The symmetric padding of the official block would give other logits.
  assert _max_error(workdir, lambda x: official_wrn_forward(
      _as64(_renamed_as_official(sd)), (x - CIFAR10_MEAN[:, None, None]) /
      CIFAR10_STD[:, None, None])) > 1e-3


@pytest.mark.parametrize('padding', [2, 4])
def test_dm_wrn_input_padding_matches_torch_forward(tmp_path, padding):
  """``DMWideResNet(padding=p)``: the zero pad before the normalisation and avg_pool2d(out, 8)
  on the 9×9 (p = 2) / 10×10 (p = 4) final map; --padding is kept in config.json."""
  mean, std = np.array([0.5071, 0.4865, 0.4409]), np.array([0.2673, 0.2564, 0.2762])
  sd = _float32(dm_wrn_state_dict(10, 1, buffers=(mean, std)))
  path = torch_files.save_zip(torch_files.state_dict(sd), str(tmp_path / 'dm.pt'))
  workdir = convert_lib.convert(path, str(tmp_path / 'run'), source='dm_wrn', padding=padding)
  assert from_workdir.get_config(workdir).model.padding == padding
  assert _max_error(workdir, lambda x: dm_wrn_forward(
      _as64(sd), x, swish, mean, std, padding)) <= 1e-4
  # Without the padding, or pooling the whole final map, the logits differ.
  assert _max_error(workdir, lambda x: dm_wrn_forward(_as64(sd), x, swish, mean, std)) > 1e-3
  assert _max_error(workdir, lambda x: dm_wrn_forward(
      _as64(sd), x, swish, mean, std, padding, pool=lambda out: out.mean(axis=(2, 3)))) > 1e-3
  with pytest.raises(ValueError, match='option of the dm_wrn source'):
    convert_lib.convert(path, str(tmp_path / 'run_wrn'), source='wrn', padding=padding)


def _renamed_as_official(sd):
  names = [('init_conv', 'conv1'), ('batchnorm_0', 'bn1'), ('batchnorm_1', 'bn2'),
           ('conv_0', 'conv1'), ('conv_1', 'conv2'), ('shortcut', 'convShortcut'),
           ('logits', 'fc')]
  out = {}
  for key, value in sd.items():
    if key.startswith('layer.'):
      _, g, _, i, rest = key.split('.', 4)
      key = f'block{int(g) + 1}.layer.{i}.{rest}'
    elif key.startswith('batchnorm.'):
      key = 'bn1.' + key[len('batchnorm.'):]
    for old, new in names:
      key = key.replace(old, new)
    out[key] = value
  return out


def test_locuslab_without_head_bn(tmp_path):
  """RobustBench ``Wong2020Fast``: a PreActResNet-18 without the final ``bn``."""
  sd = {k: v for k, v in locuslab_preact_state_dict(width=4).items() if not k.startswith('bn.')}
  path = torch_files.save_zip(torch_files.state_dict(sd), str(tmp_path / 'fast.pt'))
  workdir = convert_lib.convert(path, str(tmp_path / 'run'))
  assert from_workdir.get_config(
      workdir).model.head_bn_relu is False
  normalized = lambda x: (x - CIFAR10_MEAN[:, None, None]) / CIFAR10_STD[:, None, None]
  assert _max_error(workdir, lambda x: preact_no_head_forward(_as64(sd), normalized(x))) <= 1e-4


def test_wrn_conversion_errors(tmp_path):
  def attempt(sd, name, **kw):
    path = torch_files.save_zip(torch_files.state_dict(_float32(sd)), str(tmp_path / f'{name}.pt'))
    convert_lib.convert(path, str(tmp_path / name), **kw)

  sd = official_wrn_state_dict(10, 1)
  with pytest.raises(ValueError, match="missing key 'init_conv.weight'"):
    attempt(sd, 'wrong_source', source='dm_wrn')
  with pytest.raises(ValueError, match="missing key 'block1.layer.0.bn2.weight'"):
    attempt({k: v for k, v in sd.items() if '.bn2.' not in k}, 'missing', source='wrn')
  with pytest.raises(ValueError, match="'conv1.weight' has 8 and"):
    attempt({**sd, 'conv1.weight': np.zeros((8, 3, 3, 3))}, 'stem', source='wrn')
  with pytest.raises(ValueError, match="unexpected key 'sub_block2.layer.0.bn1.weight'"):
    attempt({**sd, 'sub_block2.layer.0.bn1.weight': np.ones(16)}, 'extra', source='wrn')
  with pytest.raises(ValueError, match='activation='):
    attempt(locuslab_preact_state_dict(width=4), 'preact', activation='swish')
  assert convert_lib.main([torch_files.save_zip(torch_files.state_dict(_float32(sd)),
                                                str(tmp_path / 'cli.pt')),
                           f'--workdir={tmp_path / "cli"}', '--source=wrn',
                           '--activation=swish']) == 0


# ------------------------------------------------------------------- training and evaluation


def test_tiny_wrn_trains_one_epoch(tmp_path):
  c = default_config()
  c.data.dir = write_cifar10_dir(str(tmp_path / 'cifar'), n_train_per_batch=4, n_test=4)
  c.model.name, c.model.depth, c.model.widen_factor = 'wide_resnet', 10, 1
  c.method.name = 'fgsm_rs'
  c.batch_size, c.num_epochs = 10, 1
  c.eval.n = c.eval.monitor_n = c.eval.batch_size = 4
  c.eval.pgd_steps, c.eval.pgd_restarts, c.eval.monitor_pgd_steps = 1, 1, 1
  c.progress = c.report = False
  results = train_and_evaluate(c, str(tmp_path / 'run'))
  assert results['evaluated_epoch'] == 1 and results['n'] == 4
  assert 0 <= results['pgd_accuracy'] <= results['clean_accuracy'] <= 1


@pytest.mark.slow  # launch.py subprocesses: AutoAttack-standard on two converted networks
def test_converted_wrn_and_dm_wrn_print_the_autoattack_table(tmp_path):
  data_dir = write_cifar10_dir(str(tmp_path / 'cifar'), n_train_per_batch=2, n_test=4)
  for source, sd in (('wrn', official_wrn_state_dict(10, 1)), ('dm_wrn', dm_wrn_state_dict(10, 1))):
    path = torch_files.save_zip(torch_files.state_dict(_float32(sd)), str(tmp_path / 'm.pt'))
    workdir = convert_lib.convert(path, str(tmp_path / source), source=source)
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'launch.py'),
         f'--config={os.path.join(ROOT, "configs", "from_workdir.py")}:{workdir}',
         f'--workdir={workdir}', '--mode=eval', f'--config.data.dir={data_dir}',
         '--config.eval.suite=aa_standard', '--config.eval.n=4', '--config.eval.batch_size=4',
         '--config.eval.apgd_steps=2', '--config.eval.fab_steps=2',
         '--config.eval.square_queries=4', '--config.eval.n_target_classes=2',
         '--config.eval.check_pgd_steps=1', '--config.progress=False'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'apgd-ce' in done.stdout.lower() and 'robust' in done.stdout.lower(), done.stdout
    data = load_dataset(ml_collections.ConfigDict({'name': 'cifar10', 'dir': data_dir}))
    report = json.load(open(os.path.join(workdir, 'eval_aa_standard.json')))
    x = data.test_images[:4].astype(np.float32) / 255
    logits = (official_wrn_forward(_as64(sd), _nchw(x)) if source == 'wrn' else
              dm_wrn_forward(_as64(sd), _nchw(x)))
    assert report['clean_accuracy'] == pytest.approx(np.mean(logits.argmax(1) ==
                                                             data.test_labels[:4]))


# -------------------------------------------------------------------------------- the recipes


def _kernels(config):
  model = build_model(config.model, CIFAR)
  return len(model.weight_layer_order(jax.eval_shape(model.init, jax.random.key(0))[0]))


@pytest.mark.parametrize('name', ['trades_eps8', 'mart_eps8', 'awp_pgd_at_eps8',
                                  'awp_trades_eps8'])
def test_recipes_default_to_wrn34_10(name):
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config()
  assert (config.model.name, config.model.depth, config.model.widen_factor) == (
      'wide_resnet', 34, 10)
  assert _kernels(config) == 35
  resolve_method(config.method, config.eps)
  small = module.get_config('preact_resnet18' if 'awp' in name else 'resnet18')
  assert small.model.name in ('resnet18', 'preact_resnet18') and small.model.normalize
  with pytest.raises(ValueError, match='no variant'):
    module.get_config('vgg')


def test_official_wrn_recipe_values():
  from configs import (awp_pgd_at_eps8, awp_trades_eps8, lap_eps8, lap_wrn_eps8, mart_eps8,
                       trades_eps8)
  mart = mart_eps8.get_config()  # YisenWang/MART train_wideresnet.py
  assert (mart.method.mart.beta, mart.num_epochs, mart.optim.lr_max, mart.optim.weight_decay,
          tuple(mart.optim.milestones), mart.model.normalize) == (6.0, 76, 0.1, 2e-4, (74,), False)
  small = mart_eps8.get_config('resnet18')  # train_resnet.py
  assert (small.method.mart.beta, small.num_epochs, small.optim.lr_max) == (None, 120, 0.01)
  assert not trades_eps8.get_config().model.normalize
  assert not awp_trades_eps8.get_config().model.normalize
  assert awp_pgd_at_eps8.get_config().model.normalize  # robust_overfitting normalises
  for variant in ('v', 'r', 'n'):  # LAP.py --model WideResNet: only the network changes
    c, reference = lap_wrn_eps8.get_config(variant), lap_eps8.get_config(variant)
    assert (c.model.name, reference.model.name) == ('wide_resnet', 'preact_resnet18')
    c.model = reference.model
    assert c == reference and _kernels(lap_wrn_eps8.get_config(variant)) == 35


def test_wrn_forward_is_jittable_and_float32(tiny):
  model, params, state = tiny
  x = jnp.ones((1, 32, 32, 3)) * 0.5
  eager = model.apply(params, state, x, True)[0]
  jitted = jax.jit(model.apply, static_argnames='train')(params, state, x, train=True)[0]
  np.testing.assert_allclose(eager, jitted, rtol=1e-4, atol=1e-5)
