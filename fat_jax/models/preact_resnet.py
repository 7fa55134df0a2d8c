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
* 'E': the stage-4 output after the head's BN-ReLU.

For a 32×32 input with base width w: A, B 32×32×w; C 16×16×2w; D 8×8×4w;
E 4×4×8w.
"""
from __future__ import annotations

import flax.linen as nn

from fat_jax.models.core import Array, Path, batch_norm, conv, dense, normalize
from fat_jax.models.resnet import resnet18_blocks, resnet18_weight_paths


class PreActBlock(nn.Module):
  """Returns ``(conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut(x), relu(bn1(x)))``."""
  features: int
  stride: int
  shortcut: bool

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    pre = nn.relu(batch_norm(x, train, name='bn1'))
    # PreActBlock.forward: `shortcut = self.shortcut(x) if hasattr(self, 'shortcut') else x`
    # (the raw input x; locuslab's PreActBottleneck uses `out` instead).
    skip = conv(x, self.features, 1, stride=self.stride, name='shortcut') if self.shortcut else x
    out = conv(pre, self.features, 3, stride=self.stride, padding=1, name='conv1')
    out = conv(nn.relu(batch_norm(out, train, name='bn2')), self.features, 3, padding=1,
               name='conv2')
    return out + skip, pre


class PreActResNet18(nn.Module):
  """Pre-activation ResNet-18 (locuslab); stages have width·(1, 2, 4, 8) channels."""
  num_classes: int
  width: int = 64
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, dict[str, Array]]:
    x = conv(normalize(x, self.mean, self.std), self.width, 3, padding=1, name='stem')
    features = {}
    for spec in resnet18_blocks(self.width):
      x, pre = PreActBlock(spec.features, spec.stride, spec.shortcut, name=spec.name)(x, train)
      if spec.index == 0:
        features['ABCD'[spec.stage]] = pre
    x = nn.relu(batch_norm(x, train, name='head_bn'))
    features['E'] = x
    return dense(x.mean(axis=(1, 2)), self.num_classes, name='linear'), features

  def weight_paths(self) -> list[Path]:
    return resnet18_weight_paths(self.width)
