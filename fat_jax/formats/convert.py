"""PyTorch ``state_dict`` → a fat_jax run directory that ``launch.py --mode=eval`` evaluates.

  python -m fat_jax.formats.convert model.pth --workdir=runs/wong2020 --source=locuslab
  python launch.py --config=configs/from_workdir.py:runs/wong2020 --workdir=runs/wong2020 \\
      --mode=eval --config.eval.suite=aa_standard

The file (``torch.save``, zip or legacy format) is read without PyTorch
(`fat_jax.formats.torch_file`). A source names the network's key layout and the defaults
of the code that trained it (data set, input normalisation, ε):

* ``locuslab``: PreActResNet-18 of ``locuslab/fast_adversarial CIFAR10/preact_resnet.py``,
  also used by ``tmllab/2024_ICML_LAP``, ``tmllab/2023_NeurIPS_AAER`` and
  ``pdejorge/N-FGSM``; CIFAR-10 normalised with μ = (0.4914, 0.4822, 0.4465),
  σ = (0.2471, 0.2435, 0.2616), the data set's statistics in fat_jax. RobustBench's
  ``Wong2020Fast`` uses these μ, σ too.
* ``kuangliu``: ResNet-18 of ``kuangliu/pytorch-cifar models/resnet.py`` as in
  ``jiaxiaojunQAQ/FGSM-PGI`` (FGSM-MEP) and the TRADES/MART repositories; those
  feed raw [0, 1] pixels (FGSM-PGI's ``utils.py``: μ = 0, σ = 1), so no normalisation.
* ``locuslab_mnist``: ``locuslab/fast_adversarial MNIST/mnist_net.py`` (an
  ``nn.Sequential``: keys 0, 2, 5, 7), MNIST without normalisation, ε = 0.3.
* ``wrn``: the WideResNet of ``yaodongyu/TRADES models/wideresnet.py`` (= MART, AWP, LAP, AAER,
  RobustBench ``wide_resnet.py``), keys ``conv1``, ``block{1,2,3}.layer.{i}.{bn1, conv1, bn2,
  conv2, convShortcut}``, ``bn1``, ``fc``; depth and widen factor read from the keys, TRADES'
  unused ``sub_block1.*`` ignored; ReLU; raw [0, 1] pixels as TRADES, MART and AWP feed them
  (LAP and AAER normalise: ``--normalization=dataset``).
* ``dm_wrn``: ``DMWideResNet`` of RobustBench ``model_zoo/architectures/dm_wide_resnet.py``,
  keys ``init_conv``, ``layer.{g}.block.{i}.{batchnorm_0, conv_0, batchnorm_1, conv_1,
  shortcut}``, ``batchnorm``, ``logits``; depth and width read from the keys; Swish (its
  RobustBench entries'; ``--activation=relu`` for the class default); its ``mean`` / ``std``
  buffers, when the file holds them, are the normalisation (else CIFAR-10's, the file's
  defaults). The class's ``padding`` argument (zero pixels added around the input before the
  normalisation) is no tensor of the state_dict: ``--padding`` sets it (default 0, what every
  RobustBench CIFAR entry of ``model_zoo/cifar10.py`` / ``cifar100.py`` constructs).

A ``locuslab`` file without the head ``bn.*`` keys (RobustBench ``Wong2020Fast``) converts to
``preact_resnet18`` with ``head_bn_relu=False``.

Weights map one to one: conv OIHW → HWIO, linear (out, in) → (in, out), BatchNorm
weight/bias → scale/bias and running mean/var → ``batch_stats`` (torch's eps 1e-5
and momentum 0.1 are fat_jax's), ``num_batches_tracked`` dropped. The first dense
layer after a conv stack reads torch's (C, H, W) flatten order; fat_jax flattens NHWC
in (H, W, C) order, so its input rows are permuted. Wrapped checkpoints
(``{'state_dict': ...}``, ``{'model': ...}``, ``{'net': ...}``, ...) are unwrapped and
a DataParallel ``module.`` prefix is removed; every other difference is an error
that names the first missing, mis-shaped or unexpected key.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax import errors

from fat_jax.formats import torch_file

from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS
from fat_jax.methods import init_train_state
from fat_jax.models import build_model
from fat_jax.models.resnet import resnet18_blocks
from fat_jax.models.wide_resnet import ACTIVATIONS, block_specs, group_widths
from fat_jax.run import run_log
from fat_jax.run.checkpoint import Checkpointer

METHOD_LABEL = 'converted'
WRAPPER_KEYS = ('state_dict', 'model_state_dict', 'model', 'net', 'network')


@dataclasses.dataclass(frozen=True)
class Source:
  """A key layout and the defaults of the code that trains it."""
  model: str
  dataset: str
  normalization: str  # 'dataset' (fat_jax's statistics of the data set) | 'none'
  eps: float
  repos: str
  activation: str = 'relu'  # wrn, dm_wrn: the network's activation


SOURCES = {
    'locuslab': Source('preact_resnet18', 'cifar10', 'dataset', 8 / 255,
                       'locuslab/fast_adversarial, tmllab/2024_ICML_LAP, tmllab/2023_NeurIPS_AAER, '
                       'pdejorge/N-FGSM, RobustBench Wong2020Fast'),
    'kuangliu': Source('resnet18', 'cifar10', 'none', 8 / 255,
                       'kuangliu/pytorch-cifar, jiaxiaojunQAQ/FGSM-PGI, TRADES, MART'),
    'locuslab_mnist': Source('mnist_net', 'mnist', 'none', 0.3,
                             'locuslab/fast_adversarial MNIST/mnist_net.py'),
    'wrn': Source('wide_resnet', 'cifar10', 'none', 8 / 255,
                  'yaodongyu/TRADES, YisenWang/MART, csdongxian/AWP, tmllab/2024_ICML_LAP, '
                  'tmllab/2023_NeurIPS_AAER, RobustBench wide_resnet.py'),
    'dm_wrn': Source('dm_wide_resnet', 'cifar10', 'dataset', 8 / 255,
                     'RobustBench dm_wide_resnet.py (deepmind-research adversarial_robustness)',
                     activation='swish'),
}
# Keys of a source's file that hold no weights of the network.
IGNORED_PREFIXES = {'wrn': ('sub_block1.',)}


@dataclasses.dataclass(frozen=True)
class Layer:
  """One torch module (``torch`` prefix) and its Flax module (``flax`` path).

  kind: 'conv', 'bn' or 'linear'; `flatten_chw`: a linear layer's input is a
  flattened (C, H, W) activation.
  """
  kind: str
  torch: str
  flax: tuple[str, ...]
  bias: bool = False
  flatten_chw: tuple[int, int, int] | None = None


def preact_resnet18_layers(width: int, head_bn_relu: bool = True) -> list[Layer]:
  """locuslab ``PreActResNet18``: conv1, layer{1-4}.{0,1}.(bn1, conv1, bn2, conv2,
  shortcut.0), bn (unless not `head_bn_relu`), linear."""
  layers = [Layer('conv', 'conv1', ('stem',))]
  for spec in resnet18_blocks(width):
    block = f'layer{spec.stage + 1}.{spec.index}'
    layers += [Layer('bn', f'{block}.bn1', (spec.name, 'bn1')),
               Layer('conv', f'{block}.conv1', (spec.name, 'conv1')),
               Layer('bn', f'{block}.bn2', (spec.name, 'bn2')),
               Layer('conv', f'{block}.conv2', (spec.name, 'conv2'))]
    if spec.shortcut:
      layers.append(Layer('conv', f'{block}.shortcut.0', (spec.name, 'shortcut')))
  head = [Layer('bn', 'bn', ('head_bn',))] if head_bn_relu else []
  return layers + head + [Layer('linear', 'linear', ('linear',), True)]


def resnet18_layers(width: int) -> list[Layer]:
  """kuangliu ``ResNet18``: conv1, bn1, layer{1-4}.{0,1}.(conv1, bn1, conv2, bn2,
  shortcut.0, shortcut.1), linear."""
  layers = [Layer('conv', 'conv1', ('stem',)), Layer('bn', 'bn1', ('stem_bn',))]
  for spec in resnet18_blocks(width):
    block = f'layer{spec.stage + 1}.{spec.index}'
    layers += [Layer('conv', f'{block}.conv1', (spec.name, 'conv1')),
               Layer('bn', f'{block}.bn1', (spec.name, 'bn1')),
               Layer('conv', f'{block}.conv2', (spec.name, 'conv2')),
               Layer('bn', f'{block}.bn2', (spec.name, 'bn2'))]
    if spec.shortcut:
      layers += [Layer('conv', f'{block}.shortcut.0', (spec.name, 'shortcut')),
                 Layer('bn', f'{block}.shortcut.1', (spec.name, 'shortcut_bn'))]
  return layers + [Layer('linear', 'linear', ('linear',), True)]


def mnist_net_layers(image_shape: tuple[int, int, int]) -> list[Layer]:
  """locuslab ``mnist_net()`` (nn.Sequential): 0 conv, 2 conv, 5 linear after Flatten, 7 linear."""
  h, w = image_shape[0] // 4, image_shape[1] // 4  # two stride-2 4×4 convs with padding 1
  return [Layer('conv', '0', ('conv1',), True), Layer('conv', '2', ('conv2',), True),
          Layer('linear', '5', ('fc1',), True, flatten_chw=(32, h, w)),
          Layer('linear', '7', ('fc2',), True)]


# The key names of the two WideResNet layouts: stem, block prefix ({g}: group from 0, {i}:
# block), the block's (bn1, conv1, bn2, conv2, 1×1 shortcut), head BN, head linear.
WRN_KEYS = {
    'wide_resnet': ('conv1', 'block{g1}.layer.{i}',
                    ('bn1', 'conv1', 'bn2', 'conv2', 'convShortcut'), 'bn1', 'fc'),
    'dm_wide_resnet': ('init_conv', 'layer.{g}.block.{i}',
                       ('batchnorm_0', 'conv_0', 'batchnorm_1', 'conv_1', 'shortcut'),
                       'batchnorm', 'logits'),
}


def wide_resnet_layers(depth: int, widen_factor: int, model: str = 'wide_resnet') -> list[Layer]:
  """The official ``WideResNet`` (conv1, block{1,2,3}.layer.{i}.(bn1, conv1, bn2, conv2,
  convShortcut where the widths differ), bn1, fc) or, for `model` 'dm_wide_resnet',
  ``DMWideResNet`` (init_conv, layer.{g}.block.{i}.(batchnorm_0, conv_0, batchnorm_1, conv_1,
  shortcut), batchnorm, logits): `WRN_KEYS`."""
  stem, prefix, (bn1, conv1, bn2, conv2, shortcut), head_bn, head = WRN_KEYS[model]
  layers = [Layer('conv', stem, ('stem',))]
  for name, group, index, in_ch, out_ch, _ in block_specs(depth, widen_factor):
    block = prefix.format(g=group, g1=group + 1, i=index)
    layers += [Layer('bn', f'{block}.{bn1}', (name, 'bn1')),
               Layer('conv', f'{block}.{conv1}', (name, 'conv1')),
               Layer('bn', f'{block}.{bn2}', (name, 'bn2')),
               Layer('conv', f'{block}.{conv2}', (name, 'conv2'))]
    if in_ch != out_ch:
      layers.append(Layer('conv', f'{block}.{shortcut}', (name, 'shortcut')))
  return layers + [Layer('bn', head_bn, ('head_bn',)), Layer('linear', head, ('linear',), True)]


def _layers(model, image_shape) -> list[Layer]:
  """The layout of the model config `model` (name and sizes)."""
  if model.name == 'preact_resnet18':
    return preact_resnet18_layers(model.width, model.head_bn_relu)
  if model.name == 'resnet18':
    return resnet18_layers(model.width)
  if model.name == 'mnist_net':
    return mnist_net_layers(image_shape)
  if model.name in WRN_KEYS:
    return wide_resnet_layers(model.depth, model.widen_factor, model.name)
  raise ValueError(f'no PyTorch layout for model {model.name!r}; convertible: preact_resnet18, '
                   'resnet18, mnist_net, wide_resnet, dm_wide_resnet.')


def wide_resnet_size(model: str, state: Mapping[str, np.ndarray]) -> tuple[int, int]:
  """(depth, widen factor) of a WideResNet state_dict: n = the number of group-1 blocks,
  depth = 6n + 4; k = the first block's conv width / 16."""
  stem_name, block, (_, conv_name, *_), _, _ = WRN_KEYS[model]
  stem_key, prefix = f'{stem_name}.weight', block.format(g=0, g1=1, i='')
  first = f'{prefix}0.{conv_name}.weight'
  for key in (stem_key, first):
    if key not in state or np.ndim(state[key]) != 4:
      raise ValueError(f'missing key {key!r} (a conv weight of the WideResNet); the state_dict '
                       f'has {len(state)} keys, e.g. {sorted(state)[:5]}. Check --source.')
  stem, width = int(state[stem_key].shape[0]), int(state[first].shape[0])
  if stem != group_widths(1)[0] or width % stem:
    raise ValueError(f'{stem_key!r} has {stem} and {first!r} {width} output channels: a '
                     'WideResNet has 16 and 16·k. Check --source.')
  blocks = {k[len(prefix):].split('.', 1)[0] for k in state if k.startswith(prefix)}
  n = 1 + max(int(b) for b in blocks if b.isdigit())
  return 6 * n + 4, width // stem


def _normalization_buffers(state: dict, info) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """DMWideResNet's ``mean`` and ``std`` buffers (C, 1, 1), removed from `state`."""
  stats = []
  for key in ('mean', 'std'):
    value = np.asarray(state.pop(key), np.float64)
    if value.size != info.image_shape[-1] or not np.all(np.isfinite(value)):
      raise ValueError(f'buffer {key!r} holds {value.size} values {value.reshape(-1)[:4]}; '
                       f'expected {info.image_shape[-1]} finite ones.')
    stats.append(tuple(float(v) for v in value.reshape(-1)))
  if min(stats[1]) <= 0:
    raise ValueError(f"buffer 'std' must be positive, got {stats[1]}.")
  return stats[0], stats[1]


def _is_state_dict(obj) -> bool:
  return (isinstance(obj, Mapping) and bool(obj) and
          all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()))


def unwrap_state_dict(obj) -> dict[str, np.ndarray]:
  """The state_dict in a loaded file: the object itself or under one of `WRAPPER_KEYS`,
  without a DataParallel ``module.`` prefix."""
  state = obj
  if not _is_state_dict(state) and isinstance(obj, Mapping):
    state = next((obj[k] for k in WRAPPER_KEYS if _is_state_dict(obj.get(k))), None)
  if not _is_state_dict(state):
    found = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(f'no state_dict found: expected a dict of tensors, or one under a key of '
                     f'{WRAPPER_KEYS}; the file holds {found}. Save model.state_dict().')
  if all(k.startswith('module.') for k in state):
    state = {k[len('module.'):]: v for k, v in state.items()}
  return dict(state)


def _torch_shape(kind: str, flax_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of a Flax parameter (for messages and checks)."""
  if kind == 'conv' and flax_name == 'kernel':
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == 'linear' and flax_name == 'kernel':
    return (shape[1], shape[0])
  return shape


def _to_flax(layer: Layer, flax_name: str, value: np.ndarray) -> np.ndarray:
  if layer.kind == 'conv' and flax_name == 'kernel':
    return value.transpose(2, 3, 1, 0)  # OIHW → HWIO
  if layer.kind == 'linear' and flax_name == 'kernel':
    if layer.flatten_chw:  # rows from torch's (C, H, W) order to fat_jax's (H, W, C) order
      value = value.reshape(value.shape[0], *layer.flatten_chw).transpose(0, 2, 3, 1)
      value = value.reshape(value.shape[0], -1)
    return value.T
  return value


# (torch name, Flax collection, Flax name) of each kind's tensors.
_TENSORS = {
    'conv': (('weight', 'params', 'kernel'), ('bias', 'params', 'bias')),
    'linear': (('weight', 'params', 'kernel'), ('bias', 'params', 'bias')),
    'bn': (('weight', 'params', 'scale'), ('bias', 'params', 'bias'),
           ('running_mean', 'batch_stats', 'mean'), ('running_var', 'batch_stats', 'var')),
}


def _lookup(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def _assign(tree: dict, path, value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def map_state_dict(state: Mapping[str, np.ndarray], layers: list[Layer], like: dict):
  """``(params, batch_stats)`` from a torch state_dict, with the shapes of `like`
  (``{'params': ..., 'batch_stats': ...}`` of shape/dtype structs).

  Raises ValueError naming the first missing or mis-shaped key (model order) or
  else the first unexpected key.
  """
  out = {'params': {}, 'batch_stats': {}}
  used = set()
  for layer in layers:
    for torch_name, collection, flax_name in _TENSORS[layer.kind]:
      if flax_name == 'bias' and layer.kind != 'bn' and not layer.bias:
        continue
      key = f'{layer.torch}.{torch_name}'
      expected = _lookup(like[collection], (*layer.flax, flax_name)).shape
      torch_expected = _torch_shape(layer.kind, flax_name, expected)
      if key not in state:
        raise ValueError(f'missing key {key!r} (expected shape {torch_expected}); the state_dict '
                         f'has {len(state)} keys, e.g. {sorted(state)[:5]}. Check --source.')
      value = np.asarray(state[key])
      if value.shape != torch_expected:
        raise ValueError(f'key {key!r} has shape {value.shape}, expected {torch_expected} '
                         f'(Flax {"/".join((*layer.flax, flax_name))} {expected}). Check '
                         '--source and --dataset (number of classes).')
      if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != 'bfloat16':
        raise ValueError(f'key {key!r} is {value.dtype}, expected a floating-point tensor.')
      _assign(out[collection], (*layer.flax, flax_name),
              np.ascontiguousarray(_to_flax(layer, flax_name, value.astype(np.float32))))
      used.add(key)
    if layer.kind == 'bn':
      used.add(f'{layer.torch}.num_batches_tracked')
  unexpected = [k for k in state if k not in used]
  if unexpected:
    raise ValueError(f'unexpected key {unexpected[0]!r} (shape {np.shape(state[unexpected[0]])})'
                     f' and {len(unexpected) - 1} more: the file holds a different network '
                     'than --source describes.')
  for collection in out:
    want = jax.tree.structure(like[collection])
    if jax.tree.structure(out[collection]) != want:
      raise AssertionError(f'layout misses Flax {collection}: {want}')  # a bug in the layout
  return out['params'], out['batch_stats']


def parse_normalization(text: str, info) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
  """'dataset' → None (the data set's statistics), 'none' → ((), ()), 'm1,m2,m3/s1,s2,s3'."""
  if text == 'dataset':
    return None
  if text == 'none':
    return (), ()
  try:
    mean, std = ([float(v) for v in part.split(',')] for part in text.split('/'))
  except ValueError:
    mean = std = None
  if mean is None or len(mean) != len(std) or len(mean) != info.image_shape[-1]:
    raise ValueError(f"normalization={text!r}: use 'dataset', 'none' or per-channel "
                     f"'m1,m2,m3/s1,s2,s3' ({info.image_shape[-1]} values each).")
  return tuple(mean), tuple(std)


class _Converted:
  """`model` whose ``init`` returns the converted weights, so that `init_train_state` builds
  the rest of the train state (optimiser buffers, ...) around them without compiling an
  initialisation."""

  def __init__(self, model, params, batch_stats):
    self._model, self._variables = model, (params, batch_stats)

  def init(self, key):
    del key
    return self._variables

  def __getattr__(self, name):
    return getattr(self._model, name)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def convert(path: str, workdir: str, *, source: str = 'locuslab', dataset: str | None = None,
            normalization: str | None = None, eps: float | None = None,
            activation: str | None = None, padding: int = 0,
            limits: torch_file.Limits = torch_file.Limits()) -> str:
  """Converts the ``torch.save`` file `path` into a fat_jax run directory `workdir`.

  Writes ``config.json`` (model, data set, normalisation, ε, method 'converted' and
  ``converted_from``: file name, sha256, source) and the checkpoint of epoch 0
  (`Checkpointer`), so that ``launch.py --mode=eval`` evaluates it with
  ``--config=configs/from_workdir.py:WORKDIR``. `dataset`, `normalization`
  ('dataset' | 'none' | 'm1,m2,m3/s1,s2,s3'), `eps` and `activation` (WideResNets: 'relu' |
  'swish') default to `source`'s (dm_wrn: the file's mean/std buffers); `padding` is
  DMWideResNet's input padding (dm_wrn only); `limits` bounds what the file may make the reader
  allocate. Returns the absolute workdir.
  """
  if source not in SOURCES:
    raise ValueError(f'source={source!r}: use one of {sorted(SOURCES)}.')
  spec = SOURCES[source]
  dataset = dataset or spec.dataset
  if dataset not in DATASET_INFOS:
    raise ValueError(f'dataset={dataset!r}: use one of {sorted(DATASET_INFOS)}.')
  info = DATASET_INFOS[dataset]
  workdir = os.path.abspath(workdir)
  if os.path.exists(os.path.join(workdir, run_log.CONFIG)) or os.path.isdir(
      os.path.join(workdir, 'checkpoints')):
    raise FileExistsError(f'{workdir} already holds a run: choose a new --workdir.')
  state = unwrap_state_dict(torch_file.load(path, limits))
  state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES.get(source, ()))}

  config = default_config()
  config.model.name, config.data.name = spec.model, dataset
  config.eps = spec.eps if eps is None else eps
  config.method.name = METHOD_LABEL
  if spec.model in ('preact_resnet18', 'resnet18'):
    if 'conv1.weight' not in state:
      raise ValueError("missing key 'conv1.weight' (the stem conv); check --source.")
    config.model.width = int(state['conv1.weight'].shape[0])
  if padding and spec.model != 'dm_wide_resnet':
    raise ValueError(f'padding={padding} is an option of the dm_wrn source, not {source!r}.')
  config.model.padding = padding
  if spec.model == 'preact_resnet18':  # RobustBench Wong2020Fast: no head BN-ReLU
    config.model.head_bn_relu = 'bn.weight' in state
  if spec.model in WRN_KEYS:
    config.model.depth, config.model.widen_factor = wide_resnet_size(spec.model, state)
    config.eval.robustbench.architecture = (
        f'WideResNet-{config.model.depth}-{config.model.widen_factor}')
    config.model.activation = activation or spec.activation
    if config.model.activation not in ACTIVATIONS:
      raise ValueError(f'activation={config.model.activation!r}: use one of {sorted(ACTIVATIONS)}.')
  elif activation not in (None, 'relu'):
    raise ValueError(f'activation={activation!r} is an option of the WideResNet sources; '
                     f'{source!r} is ReLU.')
  buffers = None
  if spec.model == 'dm_wide_resnet' and 'mean' in state and 'std' in state:
    buffers = _normalization_buffers(state, info)
  stats = parse_normalization(normalization or spec.normalization, info)
  if normalization is None and buffers is not None:
    stats = buffers
  if stats is not None:
    config.model.mean, config.model.std = stats

  model = build_model(config.model, info)
  like = jax.eval_shape(lambda: init_train_state(model, jax.random.key(0)))
  params, batch_stats = map_state_dict(
      state, _layers(config.model, info.image_shape),
      {'params': like.params, 'batch_stats': like.batch_stats})

  train_state = init_train_state(
      _Converted(model, jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, batch_stats)),
      jax.random.key(0))
  with Checkpointer(workdir) as checkpointer:
    checkpointer.save(0, train_state)
  stored = json.loads(config.to_json_best_effort())
  stored['converted_from'] = {'file': os.path.basename(path), 'sha256': _sha256(path),
                              'source': source, 'repos': spec.repos}
  run_log.write_json(workdir, run_log.CONFIG, stored)  # last: the run is complete
  return workdir


def evaluate_command(workdir: str) -> str:
  """The launcher's command (`errors.command_name`) that evaluates the run `workdir` with
  AutoAttack."""
  return (f'{errors.command_name()} --config=configs/from_workdir.py:{workdir} '
          f'--workdir={workdir} --mode=eval --config.eval.suite=aa_standard')


def main(argv: list[str] | None = None) -> int:
  """``fat-jax-convert`` / ``python -m fat_jax.formats.convert``."""
  parser = argparse.ArgumentParser(
      prog='fat-jax-convert',
      description='A PyTorch state_dict as a fat_jax run directory; evaluate that with\n  '
                  + evaluate_command('WORKDIR'),
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='sources:\n' + '\n'.join(
          f'  {name}: {s.model} on {s.dataset}, normalization {s.normalization} ({s.repos})'
          for name, s in SOURCES.items()))
  parser.add_argument('file', help='a torch.save file (.pth/.pt), zip or legacy format')
  parser.add_argument('--workdir', required=True, help='the new run directory')
  parser.add_argument('--source', default='locuslab', choices=sorted(SOURCES),
                      help='key layout and defaults of the training code (default locuslab)')
  parser.add_argument('--dataset', default=None, choices=sorted(DATASET_INFOS),
                      help="default: the source's")
  parser.add_argument('--normalization', default=None,
                      help="'dataset' (fat_jax's statistics of --dataset), 'none', or "
                           "'m1,m2,m3/s1,s2,s3'; default: what the source's code uses")
  parser.add_argument('--eps', type=float, default=None,
                      help="ε of the evaluation in [0, 1] pixel units; default: the source's")
  parser.add_argument('--activation', default=None, choices=sorted(ACTIVATIONS),
                      help="the WideResNet's activation; default: the source's (wrn relu, "
                           'dm_wrn swish)')
  parser.add_argument('--padding', type=int, default=0,
                      help="dm_wrn: the DMWideResNet's padding argument, zero pixels added on "
                           'each side of the input (not in the state_dict; default 0)')
  parser.add_argument('--max-elements', type=int, default=torch_file.MAX_ELEMENTS,
                      help='largest tensor or storage the file may declare, in elements '
                           f'(default {torch_file.MAX_ELEMENTS}); raise only for a trusted file')
  parser.add_argument('--max-total-bytes', type=int, default=torch_file.MAX_TOTAL_BYTES,
                      help='largest total of bytes read and rebuilt from the file (default '
                           f'{torch_file.MAX_TOTAL_BYTES}); raise only for a trusted file')
  args = parser.parse_args(argv)
  try:
    workdir = convert(args.file, args.workdir, source=args.source, dataset=args.dataset,
                      normalization=args.normalization, eps=args.eps,
                      activation=args.activation, padding=args.padding,
                      limits=torch_file.Limits(args.max_elements, args.max_total_bytes))
  except (ValueError, OSError) as e:  # a bad file, a refused one, a failing disk: one line
    print(f'fat-jax-convert: {errors.one_line(e)}', file=sys.stderr)
    return 2
  print(f'Wrote {workdir}. Evaluate it with:\n  {evaluate_command(workdir)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
