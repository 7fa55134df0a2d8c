"""Post-activation CIFAR ResNet-18 and the ResNet-18 block layout.

Follows ``jiaxiaojunQAQ/FGSM-PGI models/resnet.py`` (kuangliu/pytorch-cifar),
the model of FGSM-MEP: stem conv3×3-BN-ReLU; 4 stages of 2 BasicBlocks
(conv3×3-BN-ReLU-conv3×3-BN, plus a conv1×1-BN shortcut where the shape
changes, then ReLU); global average pool (torch: ``avg_pool2d(out, 4)``, the
same on 32×32 inputs); linear.

Feature nodes: 'A' the stem output (after its ReLU), 'B'..'E' the outputs of
stages 1–4 (after the last block's ReLU). For a 32×32 input with base width w:
A, B 32×32×w; C 16×16×2w; D 8×8×4w; E 4×4×8w. A channel mask of a node
(``masks``, see `fat_jax.models.core.tap`) zeroes the channel in everything
that reads the node: the next block's residual branch and its shortcut.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn

from fat_jax.models.core import (Array, Path, batch_norm, check_mask_nodes, conv, dense, normalize,
                                 tap)

BLOCKS_PER_STAGE = 2


class BlockSpec(NamedTuple):
  name: str
  stage: int  # 0-based
  index: int  # 0-based within the stage
  features: int
  stride: int
  shortcut: bool  # projection shortcut (stride ≠ 1 or channels change)


def resnet18_blocks(width: int) -> list[BlockSpec]:
  """The 8 blocks of a CIFAR ResNet-18 whose stem outputs ``width`` channels."""
  specs, in_ch = [], width
  for stage in range(4):
    features = width * 2 ** stage
    for index in range(BLOCKS_PER_STAGE):
      stride = 2 if stage > 0 and index == 0 else 1
      specs.append(BlockSpec(f'stage{stage + 1}_block{index}', stage, index, features,
                             stride, stride != 1 or in_ch != features))
      in_ch = features
  return specs


def resnet18_weight_paths(width: int) -> list[Path]:
  """Kernel paths in forward order: stem; per block conv1, conv2, shortcut; linear."""
  paths = [('stem', 'kernel')]
  for spec in resnet18_blocks(width):
    paths += [(spec.name, 'conv1', 'kernel'), (spec.name, 'conv2', 'kernel')]
    if spec.shortcut:
      paths.append((spec.name, 'shortcut', 'kernel'))
  return paths + [('linear', 'kernel')]


class BasicBlock(nn.Module):
  """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
  features: int
  stride: int
  shortcut: bool
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    out = conv(x, self.features, 3, stride=self.stride, padding=1, name='conv1',
               impl=self.conv_impl)
    out = nn.relu(batch_norm(out, train, name='bn1'))
    out = batch_norm(conv(out, self.features, 3, padding=1, name='conv2',
                          impl=self.conv_impl), train, name='bn2')
    if self.shortcut:
      x = batch_norm(conv(x, self.features, 1, stride=self.stride, name='shortcut',
                              impl=self.conv_impl),
                     train, name='shortcut_bn')
    return nn.relu(out + x)


class ResNet18(nn.Module):
  """Post-activation ResNet-18; stages have width·(1, 2, 4, 8) channels."""
  num_classes: int
  width: int = 64
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: Array, train: bool,
               masks: dict[str, Array] | None = None) -> tuple[Array, dict[str, Array]]:
    x = normalize(x, self.mean, self.std)
    x = nn.relu(batch_norm(conv(x, self.width, 3, padding=1, name='stem', impl=self.conv_impl),
                           train,
                           name='stem_bn'))
    features = {}
    x = tap(features, 'A', x, masks)
    for spec in resnet18_blocks(self.width):
      x = BasicBlock(spec.features, spec.stride, spec.shortcut, self.conv_impl,
                     name=spec.name)(x, train)
      if spec.index == BLOCKS_PER_STAGE - 1:
        x = tap(features, 'BCDE'[spec.stage], x, masks)
    check_mask_nodes(masks, features)
    return dense(x.mean(axis=(1, 2)), self.num_classes, name='linear'), features

  def weight_paths(self) -> list[Path]:
    return resnet18_weight_paths(self.width)
