"""WideResNet-d-k: the official one of TRADES / MART / AWP / LAP / AAER, and DeepMind's.

``variant='official'`` follows ``wideresnet.py`` of ``yaodongyu/TRADES`` (the same file in
``YisenWang/MART``, ``csdongxian/AWP``, ``tmllab/2024_ICML_LAP``, ``tmllab/2023_NeurIPS_AAER``
and RobustBench's ``wide_resnet.py``): stem conv3×3 to 16 channels; three groups of
n = (d − 4)/6 pre-activation blocks with 16k, 32k, 64k channels, stride 2 at the first block of
groups 2 and 3; head BN-activation, ``avg_pool2d(out, 8)`` (global on 32×32 inputs), ``fc``.
A block (``BasicBlock``) computes

    in ≠ out:  x ← act(bn1(x));  out = conv2(drop(act(bn2(conv1(x))))) + convShortcut(x)
    in = out:  out = conv2(drop(act(bn2(conv1(act(bn1(x))))))) + x

i.e. when the widths differ the activated x replaces the block input, and the 1×1 shortcut reads
it; when they are equal the shortcut is the raw x. ``drop`` is dropout with rate ``dropout``
(``dropRate``) in training. Init as the official constructor: conv weights N(0, 2/(3·3·out))
(kaiming normal, fan-out), BatchNorm 1 / 0, linear bias 0, linear weight torch's default
U(±1/√in). TRADES' file also builds an unused ``sub_block1``; it has no parameters here.

``variant='dm'`` follows ``DMWideResNet`` of ``RobustBench/robustbench
model_zoo/architectures/dm_wide_resnet.py`` (from ``deepmind/deepmind-research
adversarial_robustness``): the same blocks, but conv_0 reads its input padded (1, 1, 1, 1) for
stride 1 and (0, 1, 0, 1) (bottom and right only, TensorFlow 'SAME') for stride 2, with
padding 0; no dropout; torch's default init (the file sets none). Its normalisation
(x − mean)/std inside the forward is `mean`/`std` here, as for every fat_jax model. Its
``padding`` p (default 0) is `padding` here: ``F.pad(x, (p,) * 4)`` zero-pads the [0, 1] input
on every side *before* the normalisation (a padded pixel enters conv as −mean/std), and the
head's ``avg_pool2d(out, 8)`` then averages only the top-left 8×8 window of the larger final
map (10×10 for p = 4 on 32×32). With p > 0 that window is taken exactly as torch does; a final
map outside 8…15 pixels is refused (torch's ``view(-1, C)`` would mix the batch), as is an odd
size entering a stride-2 block (conv_0 and the shortcut would disagree in size, e.g. odd p on
32×32).

Activation: ``'relu'`` (official) or ``'swish'`` x·σ(x) (DeepMind's ``Swish``). BatchNorm:
torch's momentum 0.1 and eps 1e-5 (both files use ``nn.BatchNorm2d`` defaults).

Feature nodes (the activations the forward computes anyway, as in `preact_resnet`):

* 'A': act(bn1(·)) of group1_block0, the stem output after its BN-activation;
* 'B', 'C': the outputs of groups 1 and 2 after the BN-activation of the next group's first
  block (act(bn1(·)) of group2_block0, group3_block0);
* 'D': the group-3 output after the head's BN-activation (what is pooled).

For a 32×32 input and widen factor k: A 32×32×16, B 32×32×16k, C 16×16×32k, D 8×8×64k. A mask
of A–C zeroes the channel in everything that reads the node: conv1, and, when the block's widths
differ (always for k > 1), its 1×1 shortcut; with equal widths (group 1 at k = 1) the shortcut
reads the raw input, so the channel still reaches the block output. A mask of D zeroes the
channel before pooling.

Dropout in training draws its masks from the Flax RNG stream 'dropout', which the caller passes
(``module.apply(..., rngs={'dropout': key})``); fat_jax's training step passes none, so its runs
use the official recipes' ``dropRate=0``. Evaluation (``train=False``) never drops.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fat_jax.models.core import (Array, Path, batch_norm, check_mask_nodes, conv, normalize, tap,
                                 torch_uniform)

VARIANTS = ('official', 'dm')
ACTIVATIONS = {'relu': nn.relu, 'swish': nn.swish}
GROUPS = 3


def group_widths(widen_factor: int) -> tuple[int, int, int, int]:
  """``nChannels``: the stem's 16 and the three groups' 16k, 32k, 64k channels."""
  return 16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor


def blocks_per_group(depth: int) -> int:
  """n = (depth − 4)/6; ValueError unless depth = 6n + 4 with n ≥ 1."""
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(f'model.depth of a WideResNet must be 6n + 4 with n >= 1 (10, 16, 22, 28, '
                     f'34, ..., 70), got {depth}.')
  return (depth - 4) // 6


def block_specs(depth: int, widen_factor: int) -> list[tuple[str, int, int, int, int, int]]:
  """(name, group, index, in channels, out channels, stride) of every block, forward order."""
  widths, n = group_widths(widen_factor), blocks_per_group(depth)
  return [(f'group{g + 1}_block{i}', g, i, widths[g] if i == 0 else widths[g + 1], widths[g + 1],
           (1 if g == 0 else 2) if i == 0 else 1) for g in range(GROUPS) for i in range(n)]


def wide_resnet_weight_paths(depth: int, widen_factor: int) -> list[Path]:
  """Kernel paths in the official registration (= state_dict) order: stem; per block conv1,
  conv2, shortcut (in ≠ out); fc. 6n + 5 of them: 35 for WRN-34, 29 for WRN-28."""
  paths = [('stem', 'kernel')]
  for name, _, _, in_ch, out_ch, _ in block_specs(depth, widen_factor):
    paths += [(name, 'conv1', 'kernel'), (name, 'conv2', 'kernel')]
    if in_ch != out_ch:
      paths.append((name, 'shortcut', 'kernel'))
  return paths + [('linear', 'kernel')]


class WideBlock(nn.Module):
  """``BasicBlock`` (official) / ``_Block`` (dm); returns ``(output, act(bn1(x)))``.

  `pre_mask` (optional) multiplies act(bn1(x)) where conv1 (and a 1×1 shortcut) reads it.
  """
  in_ch: int
  out_ch: int
  stride: int
  variant: str = 'official'
  activation: str = 'relu'
  dropout: float = 0.0
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: Array, train: bool, pre_mask: Array | None = None,
               dropout_key: Array | None = None) -> tuple[Array, Array]:
    if self.variant == 'dm' and self.stride == 2 and (x.shape[1] % 2 or x.shape[2] % 2):
      raise ValueError(f'the DeepMind WideResNet needs even sizes at its stride-2 blocks, got '
                       f'{x.shape[1]}×{x.shape[2]} (odd model.padding on an even image?).')
    act = ACTIVATIONS[self.activation]
    init = 'he_normal' if self.variant == 'official' else 'torch'
    pre = act(batch_norm(x, train, name='bn1'))
    branch = pre if pre_mask is None else pre * jnp.asarray(pre_mask, pre.dtype)
    skip = x
    if self.in_ch != self.out_ch:  # the activated (masked) input replaces x for the shortcut
      skip = conv(branch, self.out_ch, 1, stride=self.stride, name='shortcut', init=init,
                  impl=self.conv_impl)
    if self.variant == 'dm':  # F.pad (1, 1, 1, 1) or (0, 1, 0, 1), then conv_0 with padding 0
      low = 1 if self.stride == 1 else 0
      branch = jnp.pad(branch, ((0, 0), (low, 1), (low, 1), (0, 0)))
      out = conv(branch, self.out_ch, 3, stride=self.stride, name='conv1', init=init,
                 impl=self.conv_impl)
    else:
      out = conv(branch, self.out_ch, 3, stride=self.stride, padding=1, name='conv1', init=init,
                 impl=self.conv_impl)
    out = act(batch_norm(out, train, name='bn2'))
    if self.dropout > 0 and train:
      out = nn.Dropout(self.dropout, deterministic=False)(out, rng=dropout_key)
    out = conv(out, self.out_ch, 3, padding=1, name='conv2', init=init, impl=self.conv_impl)
    return out + skip, pre


class WideResNet(nn.Module):
  """WideResNet-depth-widen_factor (see the module doc); `variant` 'official' or 'dm',
  `activation` 'relu' or 'swish', `dropout` the official ``dropRate``, `padding` DMWideResNet's
  input padding (dm only)."""
  num_classes: int
  depth: int = 34
  widen_factor: int = 10
  variant: str = 'official'
  activation: str = 'relu'
  dropout: float = 0.0
  padding: int = 0
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  conv_impl: str = 'xla'

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'WideResNet variant must be one of {VARIANTS}, got {self.variant!r}.')
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'model.activation must be one of {tuple(ACTIVATIONS)}, got '
                       f'{self.activation!r}.')
    if not 0 <= self.dropout < 1 or (self.variant == 'dm' and self.dropout):
      raise ValueError(f'model.dropout must be in [0, 1) (0 for the DeepMind WideResNet), got '
                       f'{self.dropout}.')
    if self.padding < 0 or (self.variant != 'dm' and self.padding):
      raise ValueError(f'model.padding must be >= 0 (0 except for the DeepMind WideResNet), got '
                       f'{self.padding}.')
    if self.widen_factor < 1:
      raise ValueError(f'model.widen_factor must be >= 1, got {self.widen_factor}.')
    blocks_per_group(self.depth)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, train: bool,
               masks: dict[str, Array] | None = None) -> tuple[Array, dict[str, Array]]:
    dropout_key = None
    if self.dropout > 0 and train:
      if not self.has_rng('dropout'):
        raise ValueError(f'WideResNet dropout={self.dropout} in training needs the Flax RNG '
                         "stream 'dropout': apply the module with rngs={'dropout': key}.")
      dropout_key = self.make_rng('dropout')
    init = 'he_normal' if self.variant == 'official' else 'torch'
    if self.padding:  # F.pad(x, (p,) * 4) of the raw input, before the normalisation
      x = jnp.pad(x, ((0, 0), (self.padding,) * 2, (self.padding,) * 2, (0, 0)))
    x = conv(normalize(x, self.mean, self.std), 16, 3, padding=1, name='stem', init=init,
             impl=self.conv_impl)
    features = {}
    for number, (name, group, index, in_ch, out_ch, stride) in enumerate(
        block_specs(self.depth, self.widen_factor)):
      node = 'ABC'[group] if index == 0 else None
      key = None if dropout_key is None else jax.random.fold_in(dropout_key, number)
      x, pre = WideBlock(in_ch, out_ch, stride, self.variant, self.activation, self.dropout,
                         self.conv_impl, name=name)(x, train, (masks or {}).get(node), key)
      if node:
        features[node] = pre
    x = ACTIVATIONS[self.activation](batch_norm(x, train, name='head_bn'))
    x = tap(features, 'D', x, masks)
    check_mask_nodes(masks, features)
    if self.padding:  # avg_pool2d(out, 8) + view(-1, C): the top-left 8×8 window
      if not (8 <= x.shape[1] < 16 and 8 <= x.shape[2] < 16):
        raise ValueError(f'model.padding={self.padding} leaves a {x.shape[1]}×{x.shape[2]} final '
                         "map; DMWideResNet's avg_pool2d(out, 8) needs 8 to 15 pixels a side.")
      x = x[:, :8, :8]
    kernel_init = torch_uniform(x.shape[-1])
    bias_init = nn.initializers.zeros if self.variant == 'official' else kernel_init
    logits = nn.Dense(self.num_classes, kernel_init=kernel_init, bias_init=bias_init,
                      name='linear')(x.mean(axis=(1, 2)))
    return logits, features

  def weight_paths(self) -> list[Path]:
    return wide_resnet_weight_paths(self.depth, self.widen_factor)
