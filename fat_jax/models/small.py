"""Small models: the locuslab MNIST net and a configurable CNN for CPU runs."""
from __future__ import annotations

import string

import flax.linen as nn

from fat_jax.models.core import (Array, Path, batch_norm, check_mask_nodes, conv, dense, normalize,
                                 tap)


class MNISTNet(nn.Module):
  """``locuslab/fast_adversarial MNIST/mnist_net.py``.

  conv 16 4×4/2 pad 1, ReLU, conv 32 4×4/2 pad 1, ReLU, flatten, fc 100, ReLU,
  fc num_classes; convs have biases (torch default). The flatten size follows
  the input (1568 = 32·7·7 for 28×28). Torch flattens in (C, H, W) order, this
  model in (H, W, C) order: a torch ``fc1.weight`` maps onto ``fc1/kernel`` after
  permuting its input axis accordingly (and transposing).

  Feature nodes: 'A' after conv1's ReLU, 'B' after conv2's ReLU.
  """
  num_classes: int = 10
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: Array, train: bool,
               masks: dict[str, Array] | None = None) -> tuple[Array, dict[str, Array]]:
    x = normalize(x, self.mean, self.std)
    features = {}
    a = tap(features, 'A', nn.relu(conv(x, 16, 4, stride=2, padding=1, bias=True, name='conv1',
                                    impl=self.conv_impl)),
            masks)
    b = tap(features, 'B', nn.relu(conv(a, 32, 4, stride=2, padding=1, bias=True, name='conv2',
                                    impl=self.conv_impl)),
            masks)
    check_mask_nodes(masks, features)
    h = nn.relu(dense(b.reshape(b.shape[0], -1), 100, name='fc1'))
    return dense(h, self.num_classes, name='fc2'), features

  def weight_paths(self) -> list[Path]:
    return [('conv1', 'kernel'), ('conv2', 'kernel'), ('fc1', 'kernel'), ('fc2', 'kernel')]


class SmallCNN(nn.Module):
  """``depth`` conv3×3 layers, global average pool, linear.

  Layer i (0-based) has ``width·2^(i//2)`` channels and stride 2 when i is odd
  (downsampling by strided convolution, no pooling). With ``batchnorm`` each
  conv is followed by BatchNorm and has no bias; otherwise it has a bias.
  Feature nodes 'A', 'B', ...: the output of each layer's ReLU.
  """
  num_classes: int
  width: int = 32
  depth: int = 4
  batchnorm: bool = False
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: Array, train: bool,
               masks: dict[str, Array] | None = None) -> tuple[Array, dict[str, Array]]:
    if not 1 <= self.depth <= len(string.ascii_uppercase):
      raise ValueError(f'depth must be in [1, 26], got {self.depth}')
    x = normalize(x, self.mean, self.std)
    features = {}
    for i in range(self.depth):
      x = conv(x, self.width * 2 ** (i // 2), 3, stride=1 + i % 2, padding=1,
               bias=not self.batchnorm, name=f'conv{i}', impl=self.conv_impl)
      if self.batchnorm:
        x = batch_norm(x, train, name=f'bn{i}')
      x = tap(features, string.ascii_uppercase[i], nn.relu(x), masks)
    check_mask_nodes(masks, features)
    return dense(x.mean(axis=(1, 2)), self.num_classes, name='linear'), features

  def weight_paths(self) -> list[Path]:
    return [(f'conv{i}', 'kernel') for i in range(self.depth)] + [('linear', 'kernel')]
