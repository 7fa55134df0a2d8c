"""`build_model`: a model by name, for a dataset's shape, classes and normalisation.

The model files import only `fat_jax.models.core`; this module imports them.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from fat_jax.models import preact_resnet, resnet, small, vit, wide_resnet
from fat_jax.models.core import COMPUTE_DTYPES, CONV_IMPLS, WEIGHT_INITS, Model

# Name → constructor(config, **common kwargs).
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    'preact_resnet18': lambda c, **kw: preact_resnet.PreActResNet18(
        width=c.get('width', 64), weight_init=c.get('init', 'torch'),
        head_bn_relu=c.get('head_bn_relu', True), **kw),
    'resnet18': lambda c, **kw: resnet.ResNet18(width=c.get('width', 64), **kw),
    'mnist_net': lambda c, **kw: small.MNISTNet(**kw),
    'cnn': lambda c, **kw: small.SmallCNN(
        width=c.get('width', 32), depth=c.get('depth', 4),
        batchnorm=c.get('batchnorm', False), **kw),
    # WideResNet-depth-widen_factor: the official one (TRADES, MART, AWP, LAP) and DeepMind's.
    'wide_resnet': lambda c, **kw: wide_resnet.WideResNet(
        depth=c.get('depth', 34), widen_factor=c.get('widen_factor', 10),
        activation=c.get('activation', 'relu'), dropout=c.get('dropout', 0.0), **kw),
    'dm_wide_resnet': lambda c, **kw: wide_resnet.WideResNet(
        depth=c.get('depth', 28), widen_factor=c.get('widen_factor', 10), variant='dm',
        activation=c.get('activation', 'relu'), dropout=c.get('dropout', 0.0),
        padding=c.get('padding', 0), **kw),
    # LAP's vit_small; model.vit overrides its sizes (a tiny ViT for tests and CPUs).
    'vit_small': lambda c, **kw: vit.vit_small(**dict(c.get('vit') or {}), **kw),
}
MODEL_NAMES = tuple(_BUILDERS)
WIDE_RESNETS = ('wide_resnet', 'dm_wide_resnet')


def build_model(config: Any, info: Any) -> Model:
  """Builds ``config.name`` for a dataset described by ``info``.

  ``info`` provides ``num_classes``, ``image_shape`` (H, W, C), ``mean`` and
  ``std`` (tuples; empty = no normalisation). ``config.normalize`` False drops the
  normalisation: the model reads [0, 1] pixels as they are (the official FGSM-MEP and
  GradAlign networks). ``config.conv`` picks the convolution (`fat_jax.models.core.CONV_IMPLS`). ``config.init`` and ``config.head_bn_relu`` are options of
  'preact_resnet18' only (GradAlign's network: 'he_normal', False). ``config.mean`` /
  ``config.std``, when set, replace the data set's statistics (() = no normalisation).
  """
  if config.name not in _BUILDERS:
    raise ValueError(f'unknown model {config.name!r}; known: {", ".join(MODEL_NAMES)}')
  init, head = config.get('init', 'torch'), config.get('head_bn_relu', True)
  if init not in WEIGHT_INITS:
    raise ValueError(f'model.init must be one of {WEIGHT_INITS}, got {init!r}.')
  if config.name != 'preact_resnet18' and (init != 'torch' or not head):
    raise ValueError("model.init and model.head_bn_relu are options of 'preact_resnet18'; "
                     f"leave them at 'torch' and True for {config.name!r}.")
  if config.name not in WIDE_RESNETS and (config.get('activation', 'relu') != 'relu' or
                                          config.get('dropout', 0.0)):
    raise ValueError(f'model.activation and model.dropout are options of {WIDE_RESNETS}; leave '
                     f"them at 'relu' and 0 for {config.name!r}.")
  if config.name != 'dm_wide_resnet' and config.get('padding', 0):
    raise ValueError(f"model.padding is an option of 'dm_wide_resnet'; leave it at 0 for "
                     f'{config.name!r}.')
  own_mean, own_std = config.get('mean'), config.get('std')
  if (own_mean is None) != (own_std is None):
    raise ValueError(f'model.mean={own_mean} and model.std={own_std}: set both (or neither, '
                     'for the data set\'s statistics).')
  normalized = config.get('normalize', True)
  mean = (info.mean if own_mean is None else own_mean) if normalized else ()
  std = (info.std if own_std is None else own_std) if normalized else ()
  mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
  if len(mean) != len(std):
    raise ValueError(f'mean {mean} and std {std} differ in length')
  if mean and len(mean) != info.image_shape[-1]:
    raise ValueError(f'model.mean has {len(mean)} values but the images have '
                     f'{info.image_shape[-1]} channels.')
  dtype = config.get('dtype', 'float32')
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(f'model.dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}.')
  conv_impl = config.get('conv', 'xla')
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'model.conv must be one of {tuple(CONV_IMPLS)}, got {conv_impl!r}.')
  module = _BUILDERS[config.name](config, num_classes=int(info.num_classes),
                                  mean=mean, std=std, conv_impl=conv_impl)
  return Model(module, tuple(int(d) for d in info.image_shape), dtype)
