"""Pre-activation ResNet-18, "locuslab" variant.

Follows ``locuslab/fast_adversarial CIFAR10/preact_resnet.py`` (PreActBlock,
PreActResNet18): stem conv3×3; 4 stages of 2 PreActBlocks with width·(1, 2, 4, 8)
channels, stride 2 at the first block of stages 2–4; head BN-ReLU, global
average pool (torch: ``avg_pool2d(out, 4)``, the same on 32×32 inputs), linear.
In this variant a block's projection shortcut taps the raw block input x, not
``relu(bn1(x))``.

Feature nodes (activations the forward computes anyway):

* 'A': ``relu(bn1(·))`` of stage1_block0, i.e. the stem output after BN-ReLU;
* 'B', 'C', 'D': the outputs of stages 1, 2, 3 after the BN-ReLU of the next
  stage's first block (``relu(bn1(·))`` of stage{2,3,4}_block0);
* 'E': the stage-4 output after the head's BN-ReLU (without the head BN-ReLU,
  ``head_bn_relu=False``: the stage-4 output itself).

A pre-activation network has no post-ReLU stage output; these are the
activations of docs/protocol.md §2.4 (the stage outputs after their next BN-ReLU).
For a 32×32 input with base width w: A, B 32×32×w; C 16×16×2w; D 8×8×4w;
E 4×4×8w.

Options for GradAlign's own PreActResNet-18 (`tml-epfl/understanding-fast-adv-training
models.py`): ``weight_init='he_normal'`` (`fat_jax.models.core`: conv weights N(0, 2/fan_out),
linear N(0, 2/fan_in), zero linear bias) and ``head_bn_relu=False`` (its forward pools the
last block's output directly); its missing input normalisation is ``build_model``'s
``normalize=False``.

A channel mask of a node (``masks``, see `fat_jax.models.core.tap`) zeroes the
channel where the node is read, i.e. in the block's residual branch (conv1);
the block's shortcut taps the raw input x (identity or conv1×1), so the
masked channel of A–D still reaches the block output through it. A mask of E
zeroes the channel before pooling.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fat_jax.models.core import (Array, Path, batch_norm, check_mask_nodes, conv, dense, normalize,
                                 tap)
from fat_jax.models.resnet import resnet18_blocks, resnet18_weight_paths


class PreActBlock(nn.Module):
  """Returns ``(conv2(relu(bn2(conv1(relu(bn1(x))·m)))) + shortcut(x), relu(bn1(x)))``.

  m is the optional channel mask `pre_mask` (1 without one).
  """
  features: int
  stride: int
  shortcut: bool
  weight_init: str = 'torch'
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: Array, train: bool,
               pre_mask: Array | None = None) -> tuple[Array, Array]:
    pre = nn.relu(batch_norm(x, train, name='bn1'))
    branch = pre if pre_mask is None else pre * jnp.asarray(pre_mask, pre.dtype)
    # PreActBlock.forward: `shortcut = self.shortcut(x) if hasattr(self, 'shortcut') else x`
    # (the raw input x; locuslab's PreActBottleneck uses `out` instead).
    init, impl = self.weight_init, self.conv_impl
    skip = conv(x, self.features, 1, stride=self.stride, name='shortcut',
                init=init, impl=impl) if self.shortcut else x
    out = conv(branch, self.features, 3, stride=self.stride, padding=1, name='conv1',
               init=init, impl=impl)
    out = conv(nn.relu(batch_norm(out, train, name='bn2')), self.features, 3, padding=1,
               name='conv2', init=init, impl=impl)
    return out + skip, pre


class PreActResNet18(nn.Module):
  """Pre-activation ResNet-18 (locuslab); stages have width·(1, 2, 4, 8) channels.

  `weight_init`: 'torch' (default) or 'he_normal'; `head_bn_relu`: the BN-ReLU before pooling
  (locuslab; GradAlign's network has none); `conv_impl`: a key of `core.CONV_IMPLS`.
  """
  num_classes: int
  width: int = 64
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  weight_init: str = 'torch'
  head_bn_relu: bool = True
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: Array, train: bool,
               masks: dict[str, Array] | None = None) -> tuple[Array, dict[str, Array]]:
    x = conv(normalize(x, self.mean, self.std), self.width, 3, padding=1, name='stem',
             init=self.weight_init, impl=self.conv_impl)
    features = {}
    for spec in resnet18_blocks(self.width):
      node = 'ABCD'[spec.stage] if spec.index == 0 else None
      pre_mask = (masks or {}).get(node)
      x, pre = PreActBlock(spec.features, spec.stride, spec.shortcut, self.weight_init,
                           self.conv_impl, name=spec.name)(x, train, pre_mask)
      if node:
        features[node] = pre
    if self.head_bn_relu:
      x = nn.relu(batch_norm(x, train, name='head_bn'))
    x = tap(features, 'E', x, masks)
    check_mask_nodes(masks, features)
    logits = dense(x.mean(axis=(1, 2)), self.num_classes, name='linear', init=self.weight_init)
    return logits, features

  def weight_paths(self) -> list[Path]:
    return resnet18_weight_paths(self.width)
