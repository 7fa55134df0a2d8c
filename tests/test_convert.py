"""PyTorch state_dicts → fat_jax: torch files read without torch, logits equal the torch forward.

The state_dicts carry the official key names and shapes (locuslab PreActResNet-18,
kuangliu ResNet-18, locuslab MNIST net); they are written in both ``torch.save``
formats by `tests.torch_files`, converted, restored from the run directory, and
compared with a float64 numpy transcription of the official torch forward (NCHW).
"""
import argparse
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from configs import from_workdir
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS, load_dataset
from fat_jax.formats import convert as convert_lib
from fat_jax.formats import torch_file
from fat_jax.methods import init_train_state
from fat_jax.models import build_model
from fat_jax.run.checkpoint import Checkpointer
from tests import torch_files
from tests.fixtures import write_cifar10_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# locuslab/fast_adversarial CIFAR10/utils.py (also LAP, AAER, N-FGSM, RobustBench Wong2020Fast)
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR10_STD = np.array([0.2471, 0.2435, 0.2616])
SAVERS = {'zip': torch_files.save_zip, 'legacy': torch_files.save_legacy}


# ------------------------------------------------- state_dicts with torch key names and shapes


class _Weights:
  """Random tensors in torch shapes, in ``Module.state_dict()`` order."""

  def __init__(self, seed: int):
    self.rng = np.random.default_rng(seed)
    self.sd = {}

  def conv(self, name, out_ch, in_ch, k, bias=False):
    bound = 1 / np.sqrt(in_ch * k * k)
    self.sd[f'{name}.weight'] = self.rng.uniform(-bound, bound, (out_ch, in_ch, k, k))
    if bias:
      self.sd[f'{name}.bias'] = self.rng.uniform(-bound, bound, (out_ch,))

  def bn(self, name, ch):
    self.sd[f'{name}.weight'] = self.rng.uniform(0.5, 1.5, ch)
    self.sd[f'{name}.bias'] = self.rng.uniform(-0.2, 0.2, ch)
    self.sd[f'{name}.running_mean'] = self.rng.uniform(-0.2, 0.2, ch)
    self.sd[f'{name}.running_var'] = self.rng.uniform(0.5, 1.5, ch)
    self.sd[f'{name}.num_batches_tracked'] = np.array(391, np.int64)

  def linear(self, name, out_f, in_f):
    bound = 1 / np.sqrt(in_f)
    self.sd[f'{name}.weight'] = self.rng.uniform(-bound, bound, (out_f, in_f))
    self.sd[f'{name}.bias'] = self.rng.uniform(-bound, bound, (out_f,))

  def result(self, dtype=np.float32):
    return {k: v if v.dtype == np.int64 else v.astype(dtype) for k, v in self.sd.items()}


def _blocks(width):
  """(prefix, in_ch, planes, stride) of the 8 blocks of a CIFAR ResNet-18."""
  in_ch = width
  for stage in range(4):
    planes = width * 2 ** stage
    for index in range(2):
      yield f'layer{stage + 1}.{index}', in_ch, planes, (2 if stage and not index else 1)
      in_ch = planes


def locuslab_preact_state_dict(width, seed=0, num_classes=10, dtype=np.float32):
  """locuslab ``PreActResNet18().state_dict()`` (base width 64 there)."""
  w = _Weights(seed)
  w.conv('conv1', width, 3, 3)
  for block, in_ch, planes, stride in _blocks(width):
    w.bn(f'{block}.bn1', in_ch)
    w.conv(f'{block}.conv1', planes, in_ch, 3)
    w.bn(f'{block}.bn2', planes)
    w.conv(f'{block}.conv2', planes, planes, 3)
    if stride != 1 or in_ch != planes:
      w.conv(f'{block}.shortcut.0', planes, in_ch, 1)
  w.bn('bn', 8 * width)
  w.linear('linear', num_classes, 8 * width)
  return w.result(dtype)


def kuangliu_resnet_state_dict(width, seed=0):
  """kuangliu ``ResNet18().state_dict()``."""
  w = _Weights(seed)
  w.conv('conv1', width, 3, 3)
  w.bn('bn1', width)
  for block, in_ch, planes, stride in _blocks(width):
    w.conv(f'{block}.conv1', planes, in_ch, 3)
    w.bn(f'{block}.bn1', planes)
    w.conv(f'{block}.conv2', planes, planes, 3)
    w.bn(f'{block}.bn2', planes)
    if stride != 1 or in_ch != planes:
      w.conv(f'{block}.shortcut.0', planes, in_ch, 1)
      w.bn(f'{block}.shortcut.1', planes)
  w.linear('linear', 10, 8 * width)
  return w.result()


def locuslab_mnist_state_dict(seed=0):
  """locuslab ``mnist_net().state_dict()`` (nn.Sequential indices 0, 2, 5, 7)."""
  w = _Weights(seed)
  w.conv('0', 16, 1, 4, bias=True)
  w.conv('2', 32, 16, 4, bias=True)
  w.linear('5', 100, 32 * 7 * 7)
  w.linear('7', 10, 100)
  return w.result()


# ------------------------------------------------------- the torch forward, transcribed (NCHW)


def conv2d(x, w, b=None, stride=1, padding=0):
  """``F.conv2d``: x (N, C, H, W), w (O, C, kh, kw)."""
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  _, _, height, width = x.shape
  _, _, kh, kw = w.shape
  ho, wo = (height - kh) // stride + 1, (width - kw) // stride + 1
  out = np.zeros((x.shape[0], w.shape[0], ho, wo))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
      out += np.einsum('nchw,oc->nohw', patch, w[:, :, i, j])
  return out if b is None else out + b[None, :, None, None]


def batch_norm_eval(x, sd, name, eps=1e-5):
  """``nn.BatchNorm2d`` in eval mode: running statistics."""
  c = lambda k: sd[f'{name}.{k}'][None, :, None, None]
  return (x - c('running_mean')) / np.sqrt(c('running_var') + eps) * c('weight') + c('bias')


def relu(x):
  return np.maximum(x, 0)


def linear(x, sd, name):
  return x @ sd[f'{name}.weight'].T + sd[f'{name}.bias']


def locuslab_preact_forward(sd, x):
  """locuslab ``PreActResNet.forward`` on normalised NCHW x."""
  out = conv2d(x, sd['conv1.weight'], padding=1)
  for block, _, _, stride in _blocks(sd['conv1.weight'].shape[0]):
    pre = relu(batch_norm_eval(out, sd, f'{block}.bn1'))
    shortcut = (conv2d(out, sd[f'{block}.shortcut.0.weight'], stride=stride)
                if f'{block}.shortcut.0.weight' in sd else out)  # the raw block input
    o = conv2d(pre, sd[f'{block}.conv1.weight'], stride=stride, padding=1)
    o = conv2d(relu(batch_norm_eval(o, sd, f'{block}.bn2')), sd[f'{block}.conv2.weight'],
               padding=1)
    out = o + shortcut
  out = relu(batch_norm_eval(out, sd, 'bn')).mean(axis=(2, 3))  # avg_pool2d(out, 4) at 4×4
  return linear(out, sd, 'linear')


def kuangliu_resnet_forward(sd, x):
  """kuangliu ``ResNet.forward``."""
  out = relu(batch_norm_eval(conv2d(x, sd['conv1.weight'], padding=1), sd, 'bn1'))
  for block, _, _, stride in _blocks(sd['conv1.weight'].shape[0]):
    o = relu(batch_norm_eval(conv2d(out, sd[f'{block}.conv1.weight'], stride=stride, padding=1),
                             sd, f'{block}.bn1'))
    o = batch_norm_eval(conv2d(o, sd[f'{block}.conv2.weight'], padding=1), sd, f'{block}.bn2')
    if f'{block}.shortcut.0.weight' in sd:
      out = batch_norm_eval(conv2d(out, sd[f'{block}.shortcut.0.weight'], stride=stride), sd,
                            f'{block}.shortcut.1')
    out = relu(o + out)
  return linear(out.mean(axis=(2, 3)), sd, 'linear')


def locuslab_mnist_forward(sd, x):
  """locuslab ``mnist_net()``: Flatten is ``x.view(x.size(0), -1)`` of NCHW."""
  out = relu(conv2d(x, sd['0.weight'], sd['0.bias'], stride=2, padding=1))
  out = relu(conv2d(out, sd['2.weight'], sd['2.bias'], stride=2, padding=1))
  out = relu(linear(out.reshape(len(out), -1), sd, '5'))
  return linear(out, sd, '7')


# ------------------------------------------------------------------------------------ helpers


def _images(shape, n=2, seed=1):
  return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


def _nchw(x):
  return x.transpose(0, 3, 1, 2).astype(np.float64)


def _restored_logits(workdir, x):
  """Logits of the run in `workdir` as ``--mode=eval`` builds it: config.json, checkpoint."""
  config = from_workdir.get_config(workdir)
  model = build_model(config.model, DATASET_INFOS[config.data.name])
  like = jax.eval_shape(lambda: init_train_state(model, jax.random.key(0)))
  checkpointer = Checkpointer(workdir)
  try:
    state = checkpointer.restore(checkpointer.latest_epoch(), like)
  finally:
    checkpointer.close()
  return np.asarray(model.apply(state.params, state.batch_stats, x, train=False)[0])


def _as64(sd):
  return {k: v.astype(np.float64) for k, v in sd.items()}


# -------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize('fmt', sorted(SAVERS))
def test_locuslab_preact_resnet18_logits_match_torch_forward(tmp_path, fmt):
  sd = locuslab_preact_state_dict(width=4)
  path = SAVERS[fmt](torch_files.state_dict(sd), str(tmp_path / 'model.pth'))
  workdir = convert_lib.convert(path, str(tmp_path / 'run'), source='locuslab')
  x = _images((32, 32, 3))
  expected = locuslab_preact_forward(_as64(sd), (_nchw(x) - CIFAR10_MEAN[:, None, None]) /
                                     CIFAR10_STD[:, None, None])
  np.testing.assert_allclose(_restored_logits(workdir, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('fmt', sorted(SAVERS))
def test_kuangliu_resnet18_logits_match_torch_forward(tmp_path, fmt):
  sd = kuangliu_resnet_state_dict(width=4)
  path = SAVERS[fmt](torch_files.state_dict(sd), str(tmp_path / 'model.pt'))
  workdir = convert_lib.convert(path, str(tmp_path / 'run'), source='kuangliu')
  x = _images((32, 32, 3))
  expected = kuangliu_resnet_forward(_as64(sd), _nchw(x))  # FGSM-PGI, TRADES, MART: raw pixels
  np.testing.assert_allclose(_restored_logits(workdir, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('fmt', sorted(SAVERS))
def test_locuslab_mnist_net_logits_match_torch_forward(tmp_path, fmt):
  sd = locuslab_mnist_state_dict()
  tensors = torch_files.state_dict(sd)
  # fc1.weight stored as the transposed view of an (in, out) storage, as torch saves `w.t()`.
  fc1 = sd['5.weight']
  tensors['5.weight'] = torch_files.Tensor(
      fc1, storage=torch_files.Storage(np.ascontiguousarray(fc1.T).reshape(-1)),
      stride=(1, fc1.shape[0]))
  path = SAVERS[fmt](tensors, str(tmp_path / 'mnist.pth'))
  workdir = convert_lib.convert(path, str(tmp_path / 'run'), source='locuslab_mnist')
  x = _images((28, 28, 1))
  expected = locuslab_mnist_forward(_as64(sd), _nchw(x))
  np.testing.assert_allclose(_restored_logits(workdir, x), expected, rtol=1e-5, atol=1e-5)


def test_wrapped_dataparallel_half_precision_checkpoint(tmp_path):
  """{'net': DataParallel state_dict} in float16 (apex amp O2 as in locuslab's train_fgsm.py),
  with BN weight and bias sharing one storage at an offset."""
  sd = locuslab_preact_state_dict(width=4, dtype=np.float16)
  tensors = torch_files.state_dict({f'module.{k}': v for k, v in sd.items()})
  shared = torch_files.Storage(np.concatenate([sd['bn.weight'], sd['bn.bias']]))
  tensors['module.bn.weight'] = torch_files.Tensor(sd['bn.weight'], storage=shared)
  tensors['module.bn.bias'] = torch_files.Tensor(sd['bn.bias'], storage=shared, offset=32)
  args = argparse.Namespace(lr_max=0.2, epochs=15)  # unpickled as an inert placeholder
  path = torch_files.save_zip({'net': tensors, 'epoch': 15, 'args': args},
                              str(tmp_path / 'ckpt.pth'), archive='archive')
  workdir = convert_lib.convert(path, str(tmp_path / 'run'))
  x = _images((32, 32, 3))
  expected = locuslab_preact_forward(_as64(sd), (_nchw(x) - CIFAR10_MEAN[:, None, None]) /
                                     CIFAR10_STD[:, None, None])
  np.testing.assert_allclose(_restored_logits(workdir, x), expected, rtol=1e-5, atol=1e-5)


def test_config_records_model_data_normalisation_and_source(tmp_path):
  path = torch_files.save_legacy(torch_files.state_dict(kuangliu_resnet_state_dict(width=4)),
                                 str(tmp_path / 'pgi.pth'))
  workdir = convert_lib.convert(path, str(tmp_path / 'run'), source='kuangliu')
  stored = json.load(open(os.path.join(workdir, 'config.json')))
  assert stored['model']['name'] == 'resnet18' and stored['model']['width'] == 4
  assert stored['model']['mean'] == [] and stored['model']['std'] == []
  assert stored['data']['name'] == 'cifar10' and stored['method']['name'] == 'converted'
  assert stored['eps'] == pytest.approx(8 / 255)
  import hashlib  # pylint: disable=import-outside-toplevel
  assert stored['converted_from']['file'] == 'pgi.pth'
  assert stored['converted_from']['sha256'] == hashlib.sha256(open(path, 'rb').read()).hexdigest()
  config = from_workdir.get_config(workdir)
  assert config.model.mean == () and config.method.name == 'converted'
  # An explicit normalisation overrides the source's default.
  workdir = convert_lib.convert(path, str(tmp_path / 'run2'), source='kuangliu',
                                normalization='0.5,0.5,0.5/0.25,0.25,0.25')
  x = _images((32, 32, 3))
  expected = kuangliu_resnet_forward(_as64(kuangliu_resnet_state_dict(width=4)),
                                     (_nchw(x) - 0.5) / 0.25)
  np.testing.assert_allclose(_restored_logits(workdir, x), expected, rtol=1e-5, atol=1e-5)


def test_errors_name_the_first_bad_key(tmp_path):
  def attempt(sd, name, **kw):
    path = torch_files.save_zip(torch_files.state_dict(sd), str(tmp_path / f'{name}.pth'))
    convert_lib.convert(path, str(tmp_path / name), **kw)

  sd = locuslab_preact_state_dict(width=4)
  with pytest.raises(ValueError, match=r"key 'linear.weight' has shape \(100, 32\), expected "
                                       r'\(10, 32\)'):
    attempt({**sd, 'linear.weight': np.zeros((100, 32), np.float32)}, 'classes')
  missing = dict(sd)
  del missing['layer2.0.shortcut.0.weight']
  with pytest.raises(ValueError, match=r"missing key 'layer2.0.shortcut.0.weight' \(expected "
                                       r'shape \(8, 4, 1, 1\)\)'):
    attempt(missing, 'missing')
  with pytest.raises(ValueError, match="unexpected key 'fc.weight'"):
    attempt({**sd, 'fc.weight': np.zeros((3, 3), np.float32)}, 'unexpected')
  with pytest.raises(ValueError, match="missing key 'bn1.weight'"):
    attempt(sd, 'wrong_source', source='kuangliu')  # a PreActResNet read as a ResNet
  with pytest.raises(ValueError, match='no state_dict found'):
    path = torch_files.save_zip({'epoch': 3}, str(tmp_path / 'nothing.pth'))
    convert_lib.convert(path, str(tmp_path / 'nothing'))
  with pytest.raises(ValueError, match='normalization='):
    attempt(sd, 'bad_norm', normalization='0.5/0.5')
  (tmp_path / 'garbage.pth').write_bytes(b'not a checkpoint at all')
  with pytest.raises(torch_file.TorchFileError, match='neither a zip nor a legacy'):
    convert_lib.convert(str(tmp_path / 'garbage.pth'), str(tmp_path / 'garbage'))
  attempt(sd, 'done')
  with pytest.raises(FileExistsError, match='already holds a run'):
    attempt(sd, 'done')


def test_cli_main(tmp_path, capsys):
  path = torch_files.save_zip(torch_files.state_dict(locuslab_mnist_state_dict()),
                              str(tmp_path / 'mnist.pth'))
  assert convert_lib.main([path, f'--workdir={tmp_path / "run"}',
                           '--source=locuslab_mnist']) == 0
  assert 'configs/from_workdir.py:' in capsys.readouterr().out
  assert convert_lib.main([path, f'--workdir={tmp_path / "run2"}']) == 2  # wrong source
  assert "missing key 'conv1.weight'" in capsys.readouterr().err


def test_real_torch_save_if_available(tmp_path):
  torch = pytest.importorskip('torch')
  sd = locuslab_mnist_state_dict()
  module_sd = {k: torch.from_numpy(v) for k, v in sd.items()}
  for name, kwargs in (('zip', {}), ('legacy', {'_use_new_zipfile_serialization': False})):
    path = str(tmp_path / f'{name}.pth')
    torch.save({'state_dict': module_sd}, path, **kwargs)
    loaded = convert_lib.unwrap_state_dict(torch_file.load(path))
    assert sorted(loaded) == sorted(sd)
    for k, v in sd.items():
      np.testing.assert_array_equal(loaded[k], v)


@pytest.mark.slow  # two launch.py subprocesses on a ResNet: about a minute
def test_converted_preact_resnet18_evaluates_through_launch(tmp_path):
  sd = locuslab_preact_state_dict(width=4, seed=3)
  path = torch_files.save_zip(torch_files.state_dict(sd), str(tmp_path / 'model.pth'))
  workdir = convert_lib.convert(path, str(tmp_path / 'run'))
  data_dir = write_cifar10_dir(str(tmp_path / 'cifar'), n_train_per_batch=2, n_test=4)

  def evaluate(*overrides):  # launch.py --mode=eval of the converted workdir on 4 test images
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'launch.py'),
         f'--config={os.path.join(ROOT, "configs", "from_workdir.py")}:{workdir}',
         f'--workdir={workdir}', '--mode=eval', f'--config.data.dir={data_dir}',
         '--config.eval.n=4', '--config.eval.batch_size=4', '--config.progress=False',
         *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

  evaluate('--config.eval.suite=pgd', '--config.eval.pgd_steps=2',
           '--config.eval.pgd_restarts=1', '--config.eval.checks=False')
  report = json.load(open(os.path.join(workdir, 'eval_pgd.json')))
  assert report['method'] == 'converted' and report['model'] == 'preact_resnet18'
  assert report['n'] == 4 and report['evaluated_epoch'] == 0
  # Its clean accuracy is the torch forward's on the same four test images.
  data = load_dataset(ml_collections.ConfigDict({'name': 'cifar10', 'dir': data_dir}))
  x = data.test_images[:4].astype(np.float32) / 255.0
  logits = locuslab_preact_forward(_as64(sd), (_nchw(x) - CIFAR10_MEAN[:, None, None]) /
                                   CIFAR10_STD[:, None, None])
  assert report['clean_accuracy'] == pytest.approx(
      np.mean(logits.argmax(1) == data.test_labels[:4]))
  assert report['robust_accuracy'] <= report['clean_accuracy']
  # The same model under L2 (RobustBench's ε = 0.5), AutoAttack-standard with short attacks.
  evaluate('--config.eval.suite=aa_standard', '--config.eval.norm=L2', '--config.eval.eps=0.5',
           '--config.eval.apgd_steps=2', '--config.eval.fab_steps=2',
           '--config.eval.square_queries=4', '--config.eval.n_target_classes=2',
           '--config.eval.check_pgd_steps=1')
  l2 = json.load(open(os.path.join(workdir, 'eval_aa_standard_L2.json')))
  assert (l2['norm'], l2['eps'], l2['n']) == ('L2', 0.5, 4)
  assert l2['clean_accuracy'] == report['clean_accuracy']
  assert l2['robust_accuracy'] <= l2['clean_accuracy']
  assert l2['checks']['validity']['status'] == 'pass' and l2['checks']['validity']['norm'] == 'L2'
  entry = json.load(open(os.path.join(workdir, 'robustbench_aa_standard_L2.json')))
  assert (entry['threat_model'], entry['eps'], entry['dataset']) == ('L2', '0.5', 'cifar10')
  assert entry['architecture'] == 'PreActResNet-18' and entry['unreliable'] is True
  assert entry['autoattack_acc'] == f"{100 * l2['robust_accuracy']:.2f}"
  assert 'apgd_steps=2' in entry['footnote']


def test_model_normalisation_override_is_checked():
  config = default_config().model
  config.mean = (0.5, 0.5, 0.5)
  with pytest.raises(ValueError, match='set both'):
    build_model(config, DATASET_INFOS['cifar10'])
  config.std = (0.5, 0.5)
  with pytest.raises(ValueError, match='differ in length'):
    build_model(config, DATASET_INFOS['cifar10'])
  config.mean, config.std = (0.5,), (0.5,)
  with pytest.raises(ValueError, match='1 values but the images have 3 channels'):
    build_model(config, DATASET_INFOS['cifar10'])
