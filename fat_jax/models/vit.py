"""Vision Transformer as in LAP (`tmllab/2024_ICML_LAP CIFAR10/vit.py`, which follows DINO's and
timm's ``vision_transformer``); `vit_small` its ViT-small: patch 4, D = 384, depth 12, 6 heads,
MLP ratio 4, qkv bias, LayerNorm eps 1e-6.

Forward (pre-norm blocks, the official ``Block.forward`` and ``VisionTransformer.forward``):

  z_0 = [cls; Conv_{p×p, stride p}(x) flattened row-major] + pos_embed
  z ← z + proj(MHSA(LN1(z))),  softmax(q·kᵀ · (D/h)^−½) over the keys, h heads
  z ← z + fc2(GELU(fc1(LN2(z)))),  exact (erf) GELU, hidden width mlp_ratio·D
  logits = head(LN(z)[:, 0])  (the class token; the file's mean pooling is commented out)

LayerNorm uses the biased variance, as torch. Init (the official ``_init_weights`` and its two
``trunc_normal_`` calls): linear weights, the class token and the position embedding ~ timm's
``trunc_normal_(std=0.02)`` (truncated at ±2 absolute, i.e. ±100σ), linear biases 0, LayerNorm
1 / 0; the patch embedding is an ``nn.Conv2d``, which ``_init_weights`` skips: torch's default
U(±1/√fan_in), fan_in = C·p².

Not reproduced: dropout, attention dropout and drop path (``vit_small`` leaves ``drop_rate``,
``attn_drop_rate`` and ``drop_path_rate`` at 0, so this module has none and ignores ``train``);
the position embedding's bicubic interpolation (an identity at the trained 32×32; here the
embedding is sized for the data set's images, 1 + (32/4)² = 65 tokens on CIFAR).

Feature nodes 'A', 'B', ...: the token sequence (1 + N, D) after blocks ⌈k·depth/4⌉,
k = 1..4, distinct (ViT-small: blocks 3, 6, 9, 12). Positions are tokens and channels embedding
dimensions, so a channel mask (`fat_jax.models.core.tap`) zeroes that dimension of every token
for all later blocks.

LAP's layers (`weight_paths`): the kernels of rank > 1 whose official name holds 'weight'
(``utils.diff_in_weights``), in the official state_dict order: patch embedding; per block qkv,
proj, fc1, fc2; head; 2 + 4·depth of them, 50 for ViT-small (the official ``--layer-number``).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from fat_jax.models.core import Array, Initializer, Path, check_mask_nodes, conv, normalize, tap

VIT_SMALL = {'patch_size': 4, 'embed_dim': 384, 'depth': 12, 'num_heads': 6, 'mlp_ratio': 4.0}
INIT_STD = 0.02
LN_EPS = 1e-6
NODES = 'ABCD'


def trunc_normal(std: float, bound: float = 2.0) -> Initializer:
  """timm's ``trunc_normal_(std=std, a=−bound, b=bound)``: N(0, std²) cut at ±bound (absolute)."""

  def init(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    return std * jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype)

  return init


def linear(x: Array, features: int, *, name: str, bias: bool = True) -> Array:
  """``nn.Linear`` with the official ``_init_weights``: weight trunc_normal(0.02), bias 0."""
  return nn.Dense(features, use_bias=bias, kernel_init=trunc_normal(INIT_STD),
                  bias_init=nn.initializers.zeros, name=name)(x)


def layer_norm(x: Array, *, name: str) -> Array:
  """``nn.LayerNorm(eps=1e-6)``: weight 1, bias 0, biased variance."""
  return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, name=name)(x)


def feature_blocks(depth: int) -> list[int]:
  """1-based indices of the blocks whose outputs are the feature nodes: ⌈k·depth/4⌉, k = 1..4."""
  return sorted({math.ceil(k * depth / len(NODES)) for k in range(1, len(NODES) + 1)})


def vit_weight_paths(depth: int) -> list[Path]:
  """LAP's layer order: patch embedding; per block qkv, proj, fc1, fc2; head."""
  paths = [('patch_embed', 'kernel')]
  for i in range(depth):
    paths += [(f'blocks_{i}', 'attn', 'qkv', 'kernel'), (f'blocks_{i}', 'attn', 'proj', 'kernel'),
              (f'blocks_{i}', 'mlp', 'fc1', 'kernel'), (f'blocks_{i}', 'mlp', 'fc2', 'kernel')]
  return paths + [('head', 'kernel')]


class Attention(nn.Module):
  """Multi-head self-attention (the official ``Attention``, no dropout)."""
  num_heads: int
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, n, d = x.shape
    head_dim = d // self.num_heads
    qkv = linear(x, 3 * d, bias=self.qkv_bias, name='qkv').reshape(b, n, 3, self.num_heads,
                                                                   head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, h, d_h)
    attn = jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', q, k) * head_dim ** -0.5, axis=-1)
    return linear(jnp.einsum('bhqk,bkhd->bqhd', attn, v).reshape(b, n, d), d, name='proj')


class Mlp(nn.Module):
  """``fc2(GELU(fc1(x)))`` with torch's exact GELU (the official ``Mlp``, no dropout)."""
  hidden: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out = x.shape[-1]
    return linear(nn.gelu(linear(x, self.hidden, name='fc1'), approximate=False), out,
                  name='fc2')


class Block(nn.Module):
  """Pre-norm transformer block: ``z + attn(norm1(z))``, then ``z + mlp(norm2(z))``."""
  num_heads: int
  mlp_ratio: float
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x + Attention(self.num_heads, self.qkv_bias, name='attn')(layer_norm(x, name='norm1'))
    hidden = int(x.shape[-1] * self.mlp_ratio)
    return x + Mlp(hidden, name='mlp')(layer_norm(x, name='norm2'))


class VisionTransformer(nn.Module):
  """LAP's ``VisionTransformer`` (module doc); the defaults are ViT-small's."""
  num_classes: int
  patch_size: int = VIT_SMALL['patch_size']
  embed_dim: int = VIT_SMALL['embed_dim']
  depth: int = VIT_SMALL['depth']
  num_heads: int = VIT_SMALL['num_heads']
  mlp_ratio: float = VIT_SMALL['mlp_ratio']
  qkv_bias: bool = True
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: Array, train: bool,
               masks: dict[str, Array] | None = None) -> tuple[Array, dict[str, Array]]:
    del train  # no BatchNorm, dropout or drop path (module doc)
    if x.shape[1] % self.patch_size or x.shape[2] % self.patch_size:
      raise ValueError(f'ViT patch size {self.patch_size} does not divide the {x.shape[1]}×'
                       f'{x.shape[2]} images.')
    d = self.embed_dim
    x = normalize(x, self.mean, self.std)
    x = conv(x, d, self.patch_size, stride=self.patch_size, bias=True, name='patch_embed',
             impl=self.conv_impl)
    x = x.reshape(x.shape[0], -1, d)  # row-major patches: torch's flatten(2).transpose(1, 2)
    cls_token = self.param('cls_token', trunc_normal(INIT_STD), (1, 1, d))
    pos_embed = self.param('pos_embed', trunc_normal(INIT_STD), (1, x.shape[1] + 1, d))
    x = jnp.concatenate([jnp.broadcast_to(cls_token, (x.shape[0], 1, d)), x], axis=1) + pos_embed
    features, nodes = {}, dict(zip(feature_blocks(self.depth), NODES))
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, self.qkv_bias, name=f'blocks_{i}')(x)
      if i + 1 in nodes:
        x = tap(features, nodes[i + 1], x, masks)
    check_mask_nodes(masks, features)
    return linear(layer_norm(x, name='norm')[:, 0], self.num_classes, name='head'), features

  def weight_paths(self) -> list[Path]:
    return vit_weight_paths(self.depth)


def vit_small(**kwargs) -> VisionTransformer:
  """The official ``vit_small()``; `kwargs` override its sizes (`VIT_SMALL`) or pass
  ``num_classes``, ``mean``, ``std``, ``conv_impl``."""
  model = VisionTransformer(**{**VIT_SMALL, **kwargs})
  sizes = {name: getattr(model, name) for name in VIT_SMALL}
  if min(sizes.values()) <= 0:
    raise ValueError(f'ViT sizes must be positive, got {sizes}.')
  if model.embed_dim % model.num_heads:
    raise ValueError(f'ViT embed_dim {model.embed_dim} is not a multiple of num_heads '
                     f'{model.num_heads}.')
  return model
