"""ViT as in LAP's official vit.py (tmllab/2024_ICML_LAP CIFAR10/vit.py): parameter layout and
count, LAP's 50 perturbed tensors in the official order, the forward against a float64 NumPy
transcription of the official PyTorch forward, and one epoch of the ViT LAP recipe."""
import math
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.special import erf

from configs import lap_vit_eps8
from fat_jax.models import build_model
from fat_jax.models.vit import feature_blocks
from fat_jax.run import run_log
from fat_jax.run.train import train_and_evaluate
from tests.fixtures import write_cifar10_dir

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)
TINY = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0)


def make_vit(shape=(32, 32, 3), **sizes):
  info = types.SimpleNamespace(num_classes=10, image_shape=shape, mean=CIFAR_MEAN, std=CIFAR_STD)
  return build_model(ml_collections.ConfigDict({'name': 'vit_small', 'vit': sizes}), info)


def official_state_dict_shapes(d=384, depth=12, ratio=4, patch=4, chans=3, img=32, classes=10):
  """(key, shape) of the official vit_small() state_dict, in its order: the model's own
  parameters (cls_token, pos_embed), then its submodules in registration order."""
  hidden, tokens = int(d * ratio), (img // patch) ** 2 + 1
  shapes = [('cls_token', (1, 1, d)), ('pos_embed', (1, tokens, d)),
            ('patch_embed.proj.weight', (d, chans, patch, patch)), ('patch_embed.proj.bias', (d,))]
  for i in range(depth):
    b = f'blocks.{i}.'
    shapes += [(b + 'norm1.weight', (d,)), (b + 'norm1.bias', (d,)),
               (b + 'attn.qkv.weight', (3 * d, d)), (b + 'attn.qkv.bias', (3 * d,)),
               (b + 'attn.proj.weight', (d, d)), (b + 'attn.proj.bias', (d,)),
               (b + 'norm2.weight', (d,)), (b + 'norm2.bias', (d,)),
               (b + 'mlp.fc1.weight', (hidden, d)), (b + 'mlp.fc1.bias', (hidden,)),
               (b + 'mlp.fc2.weight', (d, hidden)), (b + 'mlp.fc2.bias', (d,))]
  return shapes + [('norm.weight', (d,)), ('norm.bias', (d,)), ('head.weight', (classes, d)),
                   ('head.bias', (classes,))]


def flax_path(key: str) -> tuple:
  """The fat_jax parameter path of an official state_dict key."""
  parts = key.split('.')
  if parts[0] == 'blocks':
    parts = [f'blocks_{parts[1]}'] + parts[2:]
  if parts[:2] == ['patch_embed', 'proj']:
    parts = ['patch_embed'] + parts[2:]
  if parts[-1] == 'weight':
    parts[-1] = 'scale' if parts[-2].startswith('norm') else 'kernel'
  return tuple(parts)


def lookup(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def to_torch(value) -> np.ndarray:
  """A fat_jax array in torch layout: Dense (in, out) → (out, in); Conv HWIO → OIHW."""
  value = np.asarray(value, np.float64)
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  return value.T if value.ndim == 2 else value


def test_vit_small_matches_the_official_parameters_and_lap_layer_order():
  model = make_vit()
  params, state = jax.eval_shape(model.init, jax.random.key(0))
  assert state == {}
  official = official_state_dict_shapes()
  flat = {tuple(k.key for k in p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(params)}
  assert set(flat) == {flax_path(key) for key, _ in official}
  for key, shape in official:
    assert to_torch(np.zeros(flat[flax_path(key)])).shape == shape, key
  assert sum(math.prod(s) for s in flat.values()) == sum(
      math.prod(s) for _, s in official) == 21_342_346
  # utils.diff_in_weights: rank > 1 and 'weight' in the key, in state_dict order.
  perturbed = [flax_path(key) for key, shape in official if len(shape) > 1 and 'weight' in key]
  assert len(perturbed) == 50
  assert model.weight_layer_order(params) == perturbed


def test_feature_nodes():
  assert feature_blocks(12) == [3, 6, 9, 12] and feature_blocks(2) == [1, 2]
  assert feature_blocks(1) == [1] and feature_blocks(6) == [2, 3, 5, 6]
  model = make_vit()
  params, _ = jax.eval_shape(model.init, jax.random.key(0))
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  logits, _, features = jax.eval_shape(lambda p, x: model.apply(p, {}, x, True), params, x)
  assert logits.shape == (2, 10)
  assert {k: v.shape for k, v in features.items()} == {k: (2, 65, 384) for k in 'ABCD'}


def test_official_init():
  model = make_vit(**{**TINY, 'embed_dim': 64})
  params, _ = model.init(jax.random.key(0))
  flat = {tuple(k.key for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(params)}
  patch_bound = 1 / math.sqrt(3 * 4 * 4)  # torch's Conv2d default, which _init_weights skips
  for path, value in flat.items():
    if path[0] == 'patch_embed':
      assert np.abs(value).max() <= patch_bound and np.abs(value).max() > 0.9 * patch_bound
    elif path[-1] == 'scale':
      np.testing.assert_array_equal(value, 1.0)
    elif path[-1] == 'bias':
      np.testing.assert_array_equal(value, 0.0)
    else:  # linear kernels, cls_token, pos_embed: trunc_normal_(std=0.02), cut at ±2
      assert path[-1] in ('kernel', 'cls_token', 'pos_embed'), path
      if value.size >= 1000:
        assert abs(value.std() - 0.02) < 0.002 and abs(value.mean()) < 0.002, path


def layer_norm(x, w, b, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * w + b


def official_forward(sd, x, depth, heads, patch, masks=None):
  """vit.py's VisionTransformer.forward in float64 NumPy on NCHW x, after the loader's
  Normalize; `masks` {block index (1-based): (D,) keep-mask} multiplied into that block's
  output (what fat_jax's node masks do)."""
  x = (x - np.array(CIFAR_MEAN)[:, None, None]) / np.array(CIFAR_STD)[:, None, None]
  b, c, h, w = x.shape
  d = sd['cls_token'].shape[-1]
  patches = x.reshape(b, c, h // patch, patch, w // patch, patch)
  y = np.einsum('bciujv,dcuv->bdij', patches, sd['patch_embed.proj.weight'])
  y = y + sd['patch_embed.proj.bias'][None, :, None, None]
  z = y.reshape(b, d, -1).transpose(0, 2, 1)                        # flatten(2).transpose(1, 2)
  z = np.concatenate([np.broadcast_to(sd['cls_token'], (b, 1, d)), z], 1) + sd['pos_embed']
  n = z.shape[1]
  for i in range(depth):
    p = lambda name: sd[f'blocks.{i}.{name}']
    y = layer_norm(z, p('norm1.weight'), p('norm1.bias'))
    qkv = (y @ p('attn.qkv.weight').T + p('attn.qkv.bias')).reshape(b, n, 3, heads, d // heads)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(0, 1, 3, 2)) * (d // heads) ** -0.5
    attn = np.exp(attn - attn.max(-1, keepdims=True))
    attn = attn / attn.sum(-1, keepdims=True)
    y = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    z = z + y @ p('attn.proj.weight').T + p('attn.proj.bias')
    y = layer_norm(z, p('norm2.weight'), p('norm2.bias'))
    y = y @ p('mlp.fc1.weight').T + p('mlp.fc1.bias')
    y = 0.5 * y * (1 + erf(y / math.sqrt(2)))                         # nn.GELU()
    z = z + y @ p('mlp.fc2.weight').T + p('mlp.fc2.bias')
    if masks and i + 1 in masks:
      z = z * masks[i + 1]
  z = layer_norm(z, sd['norm.weight'], sd['norm.bias'])
  return z[:, 0] @ sd['head.weight'].T + sd['head.bias']


def test_forward_equals_the_official_forward():
  sizes = TINY
  model = make_vit((16, 16, 3), **sizes)
  params, state = model.init(jax.random.key(0))
  # Every parameter random (LayerNorm and biases too), so that each one is checked.
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda leaf: jnp.asarray(
      (leaf.ndim == 1) + 0.3 * rng.standard_normal(leaf.shape), jnp.float32), params)
  sd = {key: to_torch(lookup(params, flax_path(key))) for key, _ in official_state_dict_shapes(
      d=32, depth=2, img=16)}
  x = np.asarray(jax.random.uniform(jax.random.key(2), (3, 16, 16, 3)))
  mask = (np.arange(32) % 3 != 0).astype(np.float32)  # node 'A' = the output of block 1
  outputs, apply = [], jax.jit(model.apply, static_argnames='train')
  for masks, official_masks in ((None, None), ({'A': mask}, {1: mask})):
    logits, _, _ = apply(params, state, jnp.asarray(x), False, masks=masks)
    expected = official_forward(sd, x.transpose(0, 3, 1, 2).astype(np.float64), 2, 2, 4,
                                official_masks)
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-4)
    outputs.append(np.asarray(logits))
  assert np.abs(outputs[0] - outputs[1]).max() > 1e-2


def test_bad_sizes_fail_in_one_line():
  with pytest.raises(ValueError, match='not a multiple of num_heads'):
    make_vit(**{**TINY, 'num_heads': 3})
  with pytest.raises(ValueError, match='patch size 5 does not divide'):
    make_vit(**{**TINY, 'patch_size': 5}).init(jax.random.key(0))


def test_tiny_vit_trains_one_epoch_of_the_lap_recipe(tmp_path):
  c = lap_vit_eps8.get_config('n')
  assert (c.model.name, c.method.name, c.method.lap.beta, c.num_epochs) == (
      'vit_small', 'lap', 0.001, 30)
  c.data.dir = write_cifar10_dir(str(tmp_path / 'cifar'), n_train_per_batch=4, n_test=8)
  c.model.vit.update({**TINY, 'patch_size': 8})
  c.num_epochs, c.batch_size = 1, 10
  c.eval.n, c.eval.monitor_n, c.eval.batch_size = 8, 8, 8
  c.eval.pgd_steps, c.eval.pgd_restarts, c.eval.monitor_pgd_steps = 2, 1, 2
  c.progress = c.report = False
  results = train_and_evaluate(c, str(tmp_path / 'run'))
  assert results['evaluated_epoch'] == 1 and results['n'] == 8
  assert results['clean_accuracy'] >= results['pgd_accuracy']
  record = run_log.read_records(str(tmp_path / 'run'))[0]
  assert len(record['train_lap_norm']) == 2 + 4 * 2  # patch embedding, 4 per block, head
  assert all(np.isfinite(record['train_lap_norm'])) and max(record['train_lap_norm']) > 0
  assert set(record['vact']) == {'A', 'B'}
