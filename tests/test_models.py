"""Tests for fat_jax.models: shapes, parameter counts, torch init, layer order, BN, jit."""
import dataclasses
import functools
import math
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fat_jax.models import MODEL_NAMES, Model, build_model
from fat_jax.models.preact_resnet import PreActBlock

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


def make_model(name, shape=(32, 32, 3), **config) -> Model:
  """10 classes; CIFAR normalisation for RGB inputs, none for greyscale ones."""
  mean, std = (CIFAR_MEAN, CIFAR_STD) if shape[-1] == 3 else ((), ())
  info = types.SimpleNamespace(num_classes=10, image_shape=shape, mean=mean, std=std)
  return build_model(ml_collections.ConfigDict({'name': name, **config}), info)


# Small test instances: (name, input shape, config overrides).
SMALL = {
    'preact_resnet18': ((32, 32, 3), {'width': 8}),
    'resnet18': ((32, 32, 3), {'width': 8}),
    'mnist_net': ((28, 28, 1), {}),
    'cnn': ((32, 32, 3), {'width': 8, 'depth': 4, 'batchnorm': True}),
    'wide_resnet': ((32, 32, 3), {'depth': 10, 'widen_factor': 2}),
    'dm_wide_resnet': ((32, 32, 3), {'depth': 10, 'widen_factor': 1}),
    'vit_small': ((32, 32, 3), {'vit': dict(patch_size=4, embed_dim=16, depth=2, num_heads=2,
                                            mlp_ratio=4.0)}),
}
# Models whose official init is not torch's default (tested in their own files).
OWN_INIT = ('wide_resnet', 'vit_small')


def small_model(name) -> Model:
  shape, config = SMALL[name]
  return make_model(name, shape, **config)


@functools.cache
def initialised(name):
  """``(model, params, state)`` of the small instance; one (slow on CPU) init per model."""
  model = small_model(name)
  return model, *model.init(jax.random.key(0))


def count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def lookup(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def kernel_paths(params) -> set:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = {tuple(k.key for k in path) for path, _ in flat}
  return {p for p in paths if p[-1] == 'kernel'}


def batch(model: Model, n=2, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, *model.input_shape))


RESNET_NODES = {'A': (32, 32, 8), 'B': (32, 32, 8), 'C': (16, 16, 16), 'D': (8, 8, 32),
                'E': (4, 4, 64)}


@pytest.mark.parametrize('name, nodes', [
    ('preact_resnet18', RESNET_NODES),
    ('resnet18', RESNET_NODES),
    ('mnist_net', {'A': (14, 14, 16), 'B': (7, 7, 32)}),
    ('cnn', {'A': (32, 32, 8), 'B': (16, 16, 8), 'C': (16, 16, 16), 'D': (8, 8, 16)}),
])
def test_output_and_feature_shapes(name, nodes):
  model = small_model(name)
  params, state = jax.eval_shape(model.init, jax.random.key(0))
  x = jax.ShapeDtypeStruct((2, *model.input_shape), jnp.float32)
  for train in (True, False):
    logits, new_state, features = jax.eval_shape(
        lambda p, s, x: model.apply(p, s, x, train), params, state, x)
    assert logits.shape == (2, 10)
    assert {k: v.shape[1:] for k, v in features.items()} == nodes
    assert all(v.shape[0] == 2 for v in features.values())
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)


def test_parameter_counts():
  counts = {}
  for name, shape, config in [('preact_resnet18', (32, 32, 3), {'width': 64}),
                              ('resnet18', (32, 32, 3), {'width': 64}),
                              ('mnist_net', (28, 28, 1), {}),
                              ('cnn', (32, 32, 3), {'width': 8, 'depth': 4})]:
    counts[name] = count(jax.eval_shape(make_model(name, shape, **config).init,
                                        jax.random.key(0))[0])
  # locuslab PreActResNet18 = kuangliu's PreActResNet18 (11,171,146) + head BatchNorm2d(512).
  assert counts['preact_resnet18'] == 11_171_146 + 2 * 512 == 11_172_170
  assert counts['resnet18'] == 11_173_962
  assert counts['mnist_net'] == (16 * 16 + 16) + (32 * 16 * 16 + 32) + (1568 * 100 + 100) + (
      100 * 10 + 10)
  assert counts['cnn'] == (27 * 8 + 8) + (72 * 8 + 8) + (72 * 16 + 16) + (144 * 16 + 16) + (
      16 * 10 + 10)


def test_bn_free_models_have_empty_state():
  for name in ('mnist_net', 'cnn'):
    model = make_model(name, SMALL[name][0])
    assert jax.eval_shape(model.init, jax.random.key(0))[1] == {}


@pytest.mark.parametrize('name', [n for n in MODEL_NAMES if n not in OWN_INIT])
def test_torch_default_init(name):
  _, params, state = initialised(name)
  for path in kernel_paths(params):
    layer = lookup(params, path[:-1])
    kernel = np.asarray(layer['kernel'])
    bound = 1 / math.sqrt(math.prod(kernel.shape[:-1]))
    for w in [kernel] + ([np.asarray(layer['bias'])] if 'bias' in layer else []):
      assert np.abs(w).max() <= bound, path
      if w.size >= 100:
        assert np.abs(w).max() > 0.9 * bound, path
        assert abs(w.mean()) < 0.2 * bound, path
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  bn = {tuple(k.key for k in p): np.asarray(v) for p, v in flat if 'bn' in p[-2].key}
  assert bn or name == 'mnist_net'
  for path, value in bn.items():
    np.testing.assert_array_equal(value, 1.0 if path[-1] == 'scale' else 0.0, err_msg=str(path))
  for path, value in jax.tree_util.tree_flatten_with_path(state)[0]:
    np.testing.assert_array_equal(value, 1.0 if path[-1].key == 'var' else 0.0)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_weight_layer_order(name):
  model = small_model(name)
  params, _ = jax.eval_shape(model.init, jax.random.key(0))
  order = model.weight_layer_order(params)
  assert len(order) == len(set(order))
  assert set(order) == kernel_paths(params)
  assert all(lookup(params, p).ndim in (2, 4) for p in order)
  if name in ('preact_resnet18', 'resnet18'):
    assert len(order) == 21
    assert all(lookup(params, p).ndim == 4 for p in order[:-1])
    assert lookup(params, order[-1]).ndim == 2
    assert order[0] == ('stem', 'kernel')
    assert order[-1] == ('linear', 'kernel')
    assert order[1:3] == [('stage1_block0', 'conv1', 'kernel'), ('stage1_block0', 'conv2', 'kernel')]
    for stage in (2, 3, 4):
      block = f'stage{stage}_block0'
      i = order.index((block, 'conv2', 'kernel'))
      assert order[i - 1] == (block, 'conv1', 'kernel')
      assert order[i + 1] == (block, 'shortcut', 'kernel')
    assert sum(p[-2] == 'shortcut' for p in order) == 3


def test_weight_layer_order_rejects_foreign_params():
  model = small_model('preact_resnet18')
  params, _ = jax.eval_shape(small_model('cnn').init, jax.random.key(0))
  with pytest.raises(KeyError):
    model.weight_layer_order(params)


@pytest.fixture(scope='module')
def preact():
  model, params, state = initialised('preact_resnet18')
  return model, params, state, jax.jit(model.apply, static_argnames='train')


def test_batchnorm_train_updates_state_eval_keeps_it(preact):
  model, params, state, apply = preact
  x = batch(model, 4)
  _, new_state, _ = apply(params, state, x, train=True)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state, new_state)
  assert all(jax.tree_util.tree_leaves(changed))
  _, eval_state, _ = apply(params, new_state, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, eval_state, new_state)
  # torch momentum 0.1 on the first BN (stage1_block0/bn1, input = stem output).
  stem = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False).apply(
      {'params': params['stem']}, (x - jnp.array(CIFAR_MEAN)) / jnp.array(CIFAR_STD))
  bn = new_state['stage1_block0']['bn1']
  np.testing.assert_allclose(bn['mean'], 0.1 * stem.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(bn['var'], 0.9 + 0.1 * stem.var((0, 1, 2)), rtol=1e-4)


def test_train_uses_batch_statistics_eval_running_ones(preact):
  model, params, state, apply = preact
  x = batch(model, 4)
  train_logits, _, _ = apply(params, state, x, train=True)
  eval_logits, _, _ = apply(params, state, x, train=False)
  assert not np.allclose(train_logits, eval_logits)
  again, _, _ = apply(params, state, x, train=False)
  np.testing.assert_array_equal(eval_logits, again)


def test_normalisation_is_inside_the_model(preact):
  model, params, state, apply = preact
  raw = dataclasses.replace(model, module=model.module.clone(mean=(), std=()))
  x = batch(model, 2)
  x_norm = (x - jnp.array(CIFAR_MEAN)) / jnp.array(CIFAR_STD)
  logits, _, features = apply(params, state, x, train=False)
  raw_logits, _, raw_features = raw.apply(params, state, x_norm, train=False)
  np.testing.assert_allclose(logits, raw_logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(features['A'], raw_features['A'], rtol=1e-4, atol=1e-5)
  assert not np.allclose(logits, raw.apply(params, state, x, train=False)[0], atol=1e-3)


def test_preact_shortcut_taps_raw_block_input(preact):
  _, params, state, _ = preact
  block_params = dict(params['stage2_block0'])
  # bn1 scale 0 makes relu(bn1(x)) = 0, so the residual branch is 0 in eval mode and
  # the output is the shortcut alone: 0 if it tapped relu(bn1(x)), conv1x1/2(x) if raw x.
  block_params['bn1'] = jax.tree.map(jnp.zeros_like, block_params['bn1'])
  x = jax.random.normal(jax.random.key(5), (2, 8, 8, 8))
  out, pre = PreActBlock(16, 2, True).apply(
      {'params': block_params, 'batch_stats': state['stage2_block0']}, x, False)
  assert not np.any(pre)
  expected = x[:, ::2, ::2, :] @ block_params['shortcut']['kernel'][0, 0]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  assert np.abs(expected).max() > 0.1


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_jit_matches_eager(name):
  model, params, state = initialised(name)
  x = batch(model, 2)
  eager = model.apply(params, state, x, True)
  jitted = jax.jit(model.apply, static_argnames='train')(params, state, x, train=True)
  for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_model_is_hashable_static_argument_and_vmappable():
  model, params, state = initialised('cnn')
  assert model == small_model('cnn') and hash(model) == hash(small_model('cnn'))
  xs = jax.random.uniform(jax.random.key(4), (3, 2, *model.input_shape))
  forward = jax.jit(lambda m, x: m.apply(params, state, x, False)[0], static_argnums=0)
  vmapped = jax.vmap(lambda x: forward(model, x))(xs)
  for x, logits in zip(xs, vmapped):
    np.testing.assert_allclose(forward(model, x), logits, rtol=1e-4, atol=1e-5)


def test_unknown_model_name():
  with pytest.raises(ValueError, match='preact_resnet18.*resnet18.*mnist_net.*cnn'):
    make_model('vgg16')


@pytest.mark.slow  # compiles PreActResNet-18 in two dtypes
def test_bfloat16_compute_keeps_float32_weights_state_and_outputs(preact):
  model, params, state, _ = preact
  low = dataclasses.replace(model, compute_dtype='bfloat16')
  x = batch(model, 4)
  logits, new_state, features = low.apply(params, state, x, True)
  reference, _, _ = model.apply(params, state, x, True)
  assert logits.dtype == jnp.float32 and all(f.dtype == jnp.float32 for f in features.values())
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(new_state))
  # bfloat16 has an 8-bit mantissa: close to the float32 forward, but not equal to it.
  np.testing.assert_allclose(logits, reference, atol=0.05 * float(jnp.abs(reference).max()))
  assert not np.array_equal(np.asarray(logits), np.asarray(reference))
  grads = jax.grad(lambda p: low.apply(p, state, x, True)[0].sum())(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  assert make_model('cnn', dtype='bfloat16').compute_dtype == 'bfloat16'
  with pytest.raises(ValueError, match='model.dtype'):
    make_model('cnn', dtype='float16')


def test_gradalign_preact_resnet18_options():
  """`tml-epfl/understanding-fast-adv-training` models.py + utils.initialize_weights: no input
  normalisation, conv weights N(0, 2/(kh·kw·out)) (fan-out), linear N(0, 2/in) with a zero
  bias, BN γ = 1, β = 0, no BN-ReLU before pooling."""
  model = make_model('preact_resnet18', width=16, normalize=False, init='he_normal',
                     head_bn_relu=False)
  params, state = model.init(jax.random.key(0))
  assert model.module.mean == () and 'head_bn' not in params and 'head_bn' not in state
  for path in kernel_paths(params):
    layer = lookup(params, path[:-1])
    kernel = np.asarray(layer['kernel'])
    fan = kernel.shape[0] if kernel.ndim == 2 else math.prod(kernel.shape[:2]) * kernel.shape[-1]
    if kernel.size >= 2000:  # sample std within 10% of √(2/fan)
      np.testing.assert_allclose(kernel.std(), math.sqrt(2 / fan), rtol=0.1, err_msg=str(path))
      assert abs(kernel.mean()) < 0.1 * math.sqrt(2 / fan), path
    assert 'bias' not in layer or not np.any(layer['bias']), path
  assert np.asarray(params['linear']['bias']).shape == (10,)
  # Without the head BN-ReLU node E is the last block's output (it takes negative values) and
  # the logits are the linear map of its spatial mean.
  x = batch(model, 2)
  logits, _, features = model.apply(params, state, x, False)
  assert np.min(features['E']) < 0
  np.testing.assert_allclose(
      logits, features['E'].mean(axis=(1, 2)) @ params['linear']['kernel'], rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='model.init'):
    make_model('cnn', width=8, init='he_normal')
  with pytest.raises(ValueError, match="options of 'preact_resnet18'"):
    make_model('resnet18', width=8, head_bn_relu=False)


def test_normalize_false_reads_raw_pixels():
  normalized = make_model('preact_resnet18', width=8)
  raw = make_model('preact_resnet18', width=8, normalize=False)
  assert normalized.module.mean == CIFAR_MEAN and raw.module.mean == raw.module.std == ()
