"""The `Model` wrapper and the torch-default layer helpers every model file builds on.

Every model is a `flax.linen.Module` whose ``__call__(x, train, masks=None)``
returns ``(logits, features)`` and which defines ``weight_paths() -> list[Path]``,
the explicit forward order of its conv/linear kernels. ``features`` are the
activation nodes 'A', 'B', ... (docs/protocol.md §2.4), recorded with `tap`, which also
applies the optional channel masks. Layers are built with the helpers below so
that padding, initialisation and BatchNorm match torch:

* conv / linear weights and biases ~ U(±1/√fan_in), fan_in = in_ch·kh·kw
  (torch's ``kaiming_uniform_(a=√5)`` weight default and its bias default);
  or, with ``init='he_normal'``, GradAlign's ``utils.initialize_weights``
  (`tml-epfl/understanding-fast-adv-training`): conv weights N(0, 2/(kh·kw·out_ch))
  (fan-out), linear weights N(0, 2/in_features) (fan-in), biases 0;
* BatchNorm: scale 1, bias 0, torch momentum 0.1 (Flax 0.9), eps 1e-5. One
  difference remains: Flax updates the running variance with the biased batch
  variance, torch with the unbiased one (factor n/(n−1), n = B·H·W).

Mixed precision (``Model.compute_dtype = 'bfloat16'``, config ``model.dtype``):
parameters, BatchNorm statistics and optimiser state stay float32; each forward
casts the parameters and the input to bfloat16 and its logits and features back
to float32, so every loss, attack step and gradient outside the network is float32
(BatchNorm reduces in float32).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fat_jax.models import conv as conv_lib

Array = jax.Array
Params = Any  # nested dict of arrays
Path = tuple[str, ...]
Initializer = Callable[..., Array]

WEIGHT_INITS = ('torch', 'he_normal')   # model.init
COMPUTE_DTYPES = ('float32', 'bfloat16')
# model.conv: XLA's convolutions ('xla'; on CPU the input gradient in canonical layout), or
# also the 1×1 weight gradients as an im2col matmul on CPU ('im2col_grad'), or the strided
# input gradients as the transpose of an im2col matmul on CPU ('patch_input_grad', the
# evaluation attacks' choice); `fat_jax.models.conv`. Same forward values and parameters.
CONV_IMPLS = {'xla': conv_lib.conv_general_dilated,
              'im2col_grad': functools.partial(conv_lib.conv_general_dilated,
                                               patch_weight_gradient=True),
              'patch_input_grad': functools.partial(conv_lib.conv_general_dilated,
                                                    patch_input_gradient=True)}


def torch_uniform(fan_in: int) -> Initializer:
  """Initialiser U(±1/√fan_in), torch's default for conv/linear weights and biases."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def he_normal(fan: int) -> Initializer:
  """Initialiser N(0, 2/fan) (torch ``normal_(0, sqrt(2/fan))``)."""
  std = math.sqrt(2.0 / fan)

  def init(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    return std * jax.random.normal(key, shape, dtype)

  return init


def conv(x: Array, features: int, kernel: int, *, name: str, stride: int = 1,
         padding: int = 0, bias: bool = False, init: str = 'torch', impl: str = 'xla') -> Array:
  """``torch.nn.Conv2d(kernel, stride, padding, bias)`` on NHWC input; `init` 'torch' or
  'he_normal' (see the module doc); `impl` a key of `CONV_IMPLS`."""
  if init == 'he_normal':
    kernel_init, bias_init = he_normal(kernel * kernel * features), nn.initializers.zeros
  else:
    kernel_init = bias_init = torch_uniform(x.shape[-1] * kernel * kernel)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)),
                 use_bias=bias, kernel_init=kernel_init, bias_init=bias_init,
                 conv_general_dilated=CONV_IMPLS[impl], name=name)(x)


def dense(x: Array, features: int, *, name: str, init: str = 'torch') -> Array:
  """``torch.nn.Linear`` (with bias); `init` 'torch' or 'he_normal' (see the module doc)."""
  if init == 'he_normal':
    kernel_init, bias_init = he_normal(x.shape[-1]), nn.initializers.zeros
  else:
    kernel_init = bias_init = torch_uniform(x.shape[-1])
  return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init, name=name)(x)


def batch_norm(x: Array, train: bool, *, name: str) -> Array:
  """``torch.nn.BatchNorm2d`` defaults: batch statistics iff ``train``."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      use_fast_variance=False, name=name)(x)


def normalize(x: Array, mean: tuple[float, ...], std: tuple[float, ...]) -> Array:
  """Per-channel ``(x − mean) / std``; identity when ``mean`` is empty."""
  if not mean:
    return x
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def tap(features: dict[str, Array], name: str, x: Array,
        masks: dict[str, Array] | None) -> Array:
  """Records node `name` in `features` and returns what flows on from it.

  The recorded value is the node's activation before any mask; with
  ``masks[name]`` (an array broadcastable to the node, e.g. (C,) of 0/1) the
  returned value is ``x · masks[name]``, so zeroed channels reach no later layer
  (channel masking, Eq. 7 of the feature-difference paper). Without a mask for
  the node it is ``x`` itself: the unmasked forward is unchanged.
  """
  features[name] = x
  if masks is None or name not in masks:
    return x
  return x * jnp.asarray(masks[name], x.dtype)


def check_mask_nodes(masks: dict[str, Array] | None, features: dict[str, Array]) -> None:
  """ValueError for a mask of a node the model does not have."""
  unknown = sorted(set(masks or ()) - set(features))
  if unknown:
    raise ValueError(f'masks for unknown nodes {unknown}; this model has nodes {sorted(features)}.')


@dataclasses.dataclass(frozen=True)
class Model:
  """A Flax module plus its input shape; hashable, so usable as a static jit arg."""
  module: nn.Module
  input_shape: tuple[int, int, int]  # (H, W, C)
  compute_dtype: str = 'float32'     # 'bfloat16': mixed precision (see the module doc)

  def init(self, key: Array) -> tuple[Params, Params]:
    """Returns ``(params, state)``; state is 'batch_stats' ({} without BatchNorm)."""
    x = jnp.zeros((1, *self.input_shape), jnp.float32)
    # One compilation instead of eager per-shape random ops (seconds on CPU).
    variables = jax.jit(functools.partial(self.module.init, train=False))(key, x)
    return variables['params'], variables.get('batch_stats', {})

  def apply(self, params: Params, state: Params, x: Array, train: bool,
            masks: dict[str, Array] | None = None) -> tuple[Array, Params, dict[str, Array]]:
    """Pure forward on pixel-space NHWC x: ``(logits, new_state, features)``.

    `masks` (optional) maps node names to channel masks multiplied into what
    flows on from the node (see `tap`); `features` are the unmasked node values.
    """
    if self.compute_dtype != 'float32':
      low = lambda a: a.astype(self.compute_dtype)
      params, x = jax.tree.map(low, params), low(x)
    variables = {'params': params, 'batch_stats': state}
    if train:
      (logits, features), updates = self.module.apply(
          variables, x, train=True, masks=masks, mutable=['batch_stats'])
      state = updates.get('batch_stats', {})
    else:
      logits, features = self.module.apply(variables, x, train=False, masks=masks)
    if self.compute_dtype != 'float32':
      high = lambda a: a.astype(jnp.float32)
      logits, features, state = high(logits), jax.tree.map(high, features), jax.tree.map(
          high, state)
    return logits, state, features

  def weight_layer_order(self, params: Params) -> list[Path]:
    """Paths of the conv/linear kernels in forward order (KeyError if absent)."""
    paths = self.module.weight_paths()
    for path in paths:
      functools.reduce(operator.getitem, path, params)
    return paths
