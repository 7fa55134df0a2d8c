"""The PyTorch networks the benchmarks time or attack next to fat_jax's, in their official
structure and parameter names (so that `fat_jax.formats.convert` reads their ``state_dict``):

* `mnist_net`: ``locuslab/fast_adversarial MNIST/mnist_net.py`` (keys 0, 2, 5, 7);
* `preact_resnet18`: ``locuslab/fast_adversarial CIFAR10/preact_resnet.py`` at any width
  (``conv1``, ``layer1``…``layer4``, ``bn``, ``linear``; `fat_jax.formats.convert` source
  'locuslab');
* `wide_resnet`: ``yaodongyu/TRADES models/wideresnet.py`` (any depth and widen factor);
* `Normalized`: (x − mean)/std in front of a network, as the official loops normalise the data.

`state_dict_from_flax` goes the other way: fat_jax weights (a trained run's checkpoint) as the
``state_dict`` of these networks, the inverse of `fat_jax.formats.convert`'s key table.

Importing this module needs PyTorch.
"""
from __future__ import annotations

import jax
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fat_jax.formats.convert import _TENSORS, Layer, _layers, _lookup


def mnist_net(num_classes: int = 10) -> nn.Sequential:
  """``locuslab/fast_adversarial MNIST/mnist_net.py`` for 28×28 inputs (keys 0, 2, 5, 7)."""
  return nn.Sequential(
      nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
      nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
      nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, num_classes))


class PreActBlock(nn.Module):
  """locuslab's ``PreActBlock``: the shortcut (a 1×1 conv when the shape changes) reads the
  block's raw input x (``self.shortcut(x)``; its ``PreActBottleneck`` reads relu(bn1(x)))."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = self.shortcut(x) if hasattr(self, 'shortcut') else x
    return self.conv2(F.relu(self.bn2(self.conv1(out)))) + shortcut


class PreActResNet18(nn.Module):
  """locuslab's ``PreActResNet18`` with `width` channels in its first stage (64 there)."""

  def __init__(self, width: int = 64, num_classes: int = 10):
    super().__init__()
    self.conv1, cin = nn.Conv2d(3, width, 3, 1, 1, bias=False), width
    for stage, stride in enumerate((1, 2, 2, 2)):
      cout = width * 2 ** stage
      setattr(self, f'layer{stage + 1}',
              nn.Sequential(PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)))
      cin = cout
    self.bn, self.linear = nn.BatchNorm2d(cin), nn.Linear(cin, num_classes)

  def forward(self, x):
    out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
    return self.linear(F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1))


def preact_resnet18(width: int = 64, num_classes: int = 10) -> PreActResNet18:
  """locuslab's PreActResNet-18 (32×32 inputs: the pooling window is the whole 4×4 map)."""
  return PreActResNet18(width, num_classes)


class WideBlock(nn.Module):
  """TRADES' ``BasicBlock``: with in ≠ out, relu(bn1(x)) replaces x and the shortcut reads it."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.conv_shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

  def forward(self, x):
    pre = F.relu(self.bn1(x))
    if self.conv_shortcut is not None:
      x = pre
    out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
    return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + out


class WideResNet(nn.Module):
  """TRADES' ``WideResNet(depth, widen_factor)``."""

  def __init__(self, depth: int = 34, widen: int = 10, num_classes: int = 10):
    super().__init__()
    widths, n = [16, 16 * widen, 32 * widen, 64 * widen], (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.blocks = nn.Sequential(*(
        WideBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                  (1 if g == 0 else 2) if i == 0 else 1)
        for g in range(3) for i in range(n)))
    self.bn1, self.fc = nn.BatchNorm2d(widths[3]), nn.Linear(widths[3], num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.blocks(self.conv1(x))))
    return self.fc(F.avg_pool2d(out, 8).flatten(1))


def wide_resnet(depth: int = 34, widen: int = 10, num_classes: int = 10) -> WideResNet:
  """TRADES' WideResNet-depth-widen."""
  return WideResNet(depth, widen, num_classes)


class Normalized(nn.Module):
  """``network((x − mean)/std)`` per channel (NCHW)."""

  def __init__(self, network: nn.Module, mean, std):
    super().__init__()
    self.network = network
    self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

  def forward(self, x):
    return self.network((x - self.mean) / self.std)


def torch_layout(layer: Layer, flax_name: str, value: np.ndarray) -> np.ndarray:
  """The inverse of `fat_jax.formats.convert`'s torch → Flax layout: a conv kernel HWIO → OIHW,
  a linear kernel (in, out) → (out, in), its rows back from fat_jax's flattened (H, W, C) order
  to torch's (C, H, W) one where `layer.flatten_chw`; every other tensor as it is."""
  if layer.kind == 'conv' and flax_name == 'kernel':
    return value.transpose(3, 2, 0, 1)
  if layer.kind == 'linear' and flax_name == 'kernel':
    value = value.T
    if layer.flatten_chw:
      c, h, w = layer.flatten_chw
      value = value.reshape(value.shape[0], h, w, c).transpose(0, 3, 1, 2)
      value = value.reshape(value.shape[0], -1)
  return value


def state_dict_from_flax(params, batch_stats, model_config, image_shape) -> dict[str, torch.Tensor]:
  """The PyTorch ``state_dict`` of fat_jax's `params` / `batch_stats` for the model config
  `model_config` (name and sizes; `image_shape` (H, W, C)): `fat_jax.formats.convert`'s layout of
  that model read backwards (Flax scale, bias, mean, var → BatchNorm weight, bias, running_mean,
  running_var; ``num_batches_tracked`` 0, which torch's eval forward does not read), so that
  ``convert`` of the saved dict gives back `params` and `batch_stats` exactly.

  Raises ValueError when a Flax tensor is left out of the layout (another network).
  """
  state, exported = {}, 0
  trees = {'params': params, 'batch_stats': batch_stats}
  for layer in _layers(model_config, image_shape):
    for torch_name, collection, flax_name in _TENSORS[layer.kind]:
      if flax_name == 'bias' and layer.kind != 'bn' and not layer.bias:
        continue
      value = np.asarray(_lookup(trees[collection], (*layer.flax, flax_name)), np.float32)
      state[f'{layer.torch}.{torch_name}'] = torch.from_numpy(
          np.array(torch_layout(layer, flax_name, value), order='C'))  # a writable copy
      exported += 1
    if layer.kind == 'bn':
      state[f'{layer.torch}.num_batches_tracked'] = torch.tensor(0)
  leaves = len(jax.tree.leaves(trees))
  if exported != leaves:
    raise ValueError(f'{model_config.name}: the PyTorch layout holds {exported} of the model\'s '
                     f'{leaves} tensors; the weights belong to another network.')
  return state
