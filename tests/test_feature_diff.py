"""Feature-activation differences (docs/protocol.md §2.4): V_act / T_act against hand
computation, channel masks, L_stable and L_co, the methods built on them, the inference-noise
wrapper, and the analysis and noise-evaluation entry points on a tiny run."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fat_jax import optim

from fat_jax.attacks import fgsm_attack, with_input_noise
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS, load_dataset
from fat_jax.evaluate import PGDSettings, evaluate_robustness
from fat_jax.run import run_log
from fat_jax.run.checkpoint import Checkpointer
from fat_jax.analysis.feature_analysis import (activation_statistics, analyze_run, masked_accuracy,
                                      masking_study, threshold_masks, variance_masks)
from fat_jax.losses import cross_entropy
from fat_jax.losses.feature_diff import (channel_saliency, channel_squared_difference, co_loss,
                                         feature_distance, stable_loss, top_channels)
from fat_jax.analysis.noise_eval import evaluate_input_noise
from fat_jax.methods import init_train_state, make_train_step, resolve_method
from fat_jax.models import build_model
from fat_jax.parallel import make_data_mesh
from fat_jax.run.runs import Run
from tests.test_apgd import init_mlp, mlp_apply
from tests.test_models import initialised
from tests.test_train import data_dir, tiny_config  # noqa: F401

EPS = 0.1


def fixed_features():
  """Two NHWC feature maps (N=2, H=1, W=2, C=3) with hand-checkable differences."""
  a = jnp.array([[[[1., 0., 2.], [0., 1., 0.]]], [[[0., 0., 1.], [3., 0., 0.]]]])
  b = jnp.array([[[[1., 2., 0.], [0., 1., 0.]]], [[[0., 0., 1.], [0., 0., 4.]]]])
  return a, b


def test_vact_and_tact_by_hand():
  a, b = fixed_features()
  # Example 0: differences (0, −2, 2), (0, 0, 0) → √8; example 1: (0, 0, 0), (3, 0, −4) → 5.
  np.testing.assert_allclose(feature_distance(a, b), [np.sqrt(8), 5.0], rtol=1e-6)
  # Per channel Σ (a − b)² over N·H·W = 4 positions: (9, 4, 4 + 16).
  sq = channel_squared_difference(a, b)
  np.testing.assert_allclose(sq, [9.0, 4.0, 20.0])
  np.testing.assert_allclose(channel_saliency(sq, 4), np.tanh(100 * np.array([9, 4, 20]) / 4))
  np.testing.assert_allclose(channel_saliency(sq, 4, scale=0.01),
                             np.tanh(0.01 * np.array([9, 4, 20]) / 4), rtol=1e-6)
  # L_stable = α3/(N·H·W) Σ_k ‖·‖² per example with N = C = 3 channels, H·W = 2, averaged
  # over the B = 2 examples: 200·33/(2·2·3); on C_p = {0, 2}: 200·29/12 (Eq. 8's normaliser).
  np.testing.assert_allclose(stable_loss(a, b), 200 * 33 / 12, rtol=1e-6)
  np.testing.assert_allclose(stable_loss(a, b, alpha3=1.0, channels=jnp.array([1., 0., 1.])),
                             29 / 12, rtol=1e-6)
  np.testing.assert_array_equal(top_channels(jnp.array([0.2, 0.9, 0.1, 0.9]), 50), [0, 1, 0, 1])
  assert int(top_channels(jnp.ones(64), 10).sum()) == 7    # ⌈6.4⌉
  assert int(top_channels(jnp.ones(64), 1).sum()) == 1
  assert int(top_channels(jnp.ones(16), 20).sum()) == 4    # ⌈3.2⌉
  with pytest.raises(ValueError, match='percent'):
    top_channels(jnp.ones(4), 0)


def test_stable_loss_is_alpha3_times_the_mean_squared_difference():
  """Eq. 8 with N = channels: per example α3 × the mean over (channel, h, w), then the batch
  mean, i.e. α3 · mean over (batch, h, w, channel); not C times that (a sum over channels)."""
  a = np.asarray(jax.random.normal(jax.random.key(0), (3, 4, 5, 8)), np.float64)
  b = np.asarray(jax.random.normal(jax.random.key(1), (3, 4, 5, 8)), np.float64)
  expected = 200.0 * np.mean((a - b) ** 2)
  per_example = [200.0 / (8 * 4 * 5) * np.sum((a[n] - b[n]) ** 2) for n in range(3)]
  np.testing.assert_allclose(expected, np.mean(per_example))
  value = float(stable_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert abs(value - 8 * expected) > 0.5 * expected  # the channel-summed (× C) scale fails


def linear_features(params, state, x, train, masks=None):
  """A linear classifier whose feature nodes are x itself and 2x − 0.5 (NHWC); masks unused."""
  logits = x.reshape(len(x), -1) @ params['w']
  return logits, state, {'A': x, 'B': 2 * x - 0.5}


def test_activation_statistics_over_a_data_set_by_hand():
  x = jax.random.uniform(jax.random.key(0), (5, 2, 3, 2), minval=0.1, maxval=0.9)
  y = jnp.arange(5) % 3
  params = {'w': jax.random.normal(jax.random.key(1), (12, 3))}
  # batch_size 2: three batches, the last one padded.
  stats = activation_statistics(linear_features, params, {}, x, y, eps=EPS, batch_size=2)
  delta = fgsm_attack(linear_features, params, {}, x, y, None, eps=EPS, alpha=EPS,
                      train=False).delta
  xa = np.asarray(x + delta, np.float64)
  x = np.asarray(x, np.float64)
  for node, scale in (('A', 1.0), ('B', 2.0)):
    diff = scale * (x - xa)
    np.testing.assert_allclose(stats['vact'][node],
                               np.mean(np.sqrt((diff ** 2).reshape(5, -1).sum(1))), rtol=1e-5)
    msd = (diff ** 2).sum((0, 1, 2)) / (5 * 2 * 3)
    np.testing.assert_allclose(stats['mean_squared_difference'][node], msd, rtol=1e-5)
    np.testing.assert_allclose(stats['tact'][node], np.tanh(100 * msd), rtol=1e-5)
    adv = scale * xa - (0.5 if node == 'B' else 0.0)
    np.testing.assert_allclose(stats['variance'][node], adv.reshape(-1, 2).var(0), rtol=1e-4)
  assert (stats['n'], stats['attack']) == (5, 'fgsm')
  np.testing.assert_array_equal(threshold_masks(np.array([0.2, 0.995, 1.0]), 0.99), [1, 0, 0])
  np.testing.assert_array_equal(threshold_masks(np.array([0.2, 0.995, 1.0]), 1.0), [1, 1, 1])
  np.testing.assert_array_equal(variance_masks(np.array([0.3, 0.1, 0.5]), 2), [0, 1, 0])


def test_tact_eq6_as_written_on_a_hand_made_data_set():
  """Eq. 6: T_act^{i,k} = tanh(α · Σ_{x∈D} ‖M_{i,k}(x) − M_{i,k}(x + δ)‖² / (N·H·W)), N the
  number of channels, the sum over the whole data set; numpy over a 7-point data set."""
  x = jax.random.uniform(jax.random.key(7), (7, 2, 3, 2), minval=0.1, maxval=0.9)
  y = jnp.arange(7) % 3
  params = {'w': jax.random.normal(jax.random.key(8), (12, 3))}
  alpha = 2.0  # small enough that tanh does not saturate, so the normaliser is visible
  stats = activation_statistics(linear_features, params, {}, x, y, eps=EPS, batch_size=3,
                                scale=alpha, tact_reduction='eq6')
  delta = np.asarray(fgsm_attack(linear_features, params, {}, x, y, None, eps=EPS, alpha=EPS,
                                 train=False).delta, np.float64)
  n_channels, height, width = 2, 2, 3
  for node, factor in (('A', 1.0), ('B', 2.0)):   # M(x) − M(x + δ) = −factor·δ
    per_channel = np.array([np.sum((factor * delta[:, :, :, k]) ** 2) for k in range(n_channels)])
    expected = np.tanh(alpha * per_channel / (n_channels * height * width))
    np.testing.assert_allclose(stats['tact'][node], expected, rtol=1e-5)
    assert np.all((0 < expected) & (expected < 0.99))
    # The default divides by |D|·H·W instead (the mean over examples).
    default = activation_statistics(linear_features, params, {}, x, y, eps=EPS, batch_size=3,
                                    scale=alpha)['tact'][node]
    np.testing.assert_allclose(default, np.tanh(alpha * per_channel / (7 * height * width)),
                               rtol=1e-5)
  assert stats['tact_reduction'] == 'eq6'
  with pytest.raises(ValueError, match='tact_reduction'):
    activation_statistics(linear_features, params, {}, x, y, eps=EPS, tact_reduction='sum')


def cut_inputs(params, consumers, keep):
  """`params` with the input channels `keep` = 0 of the layers at `consumers` zeroed (the
  input-channel axis of a conv kernel (H, W, in, out) or a dense kernel (in, out))."""
  cut = jax.tree.map(lambda v: v, params)
  for path in consumers:
    layer = cut
    for key in path[:-1]:
      layer = layer[key]
    layer[path[-1]] = {**layer[path[-1]], 'kernel': layer[path[-1]]['kernel'] * keep[:, None]}
  return cut


@pytest.mark.parametrize('name, cuts', [
    # (node, masked channels, the layers that read the node): zeroing channels of a node is
    # exactly zeroing those input channels of every layer that reads it, and nothing else.
    ('cnn', [('B', [1, 6], [('conv2',)])]),
    pytest.param('resnet18', [('B', [0, 5], [('stage2_block0', 'conv1'),
                                             ('stage2_block0', 'shortcut')])],
                 marks=pytest.mark.slow),
    # PreAct: the block's shortcut taps the raw input x, so only conv1 reads the node.
    pytest.param('preact_resnet18', [('B', [0, 5], [('stage2_block0', 'conv1')]),
                                     ('E', [3], [('linear',)])], marks=pytest.mark.slow),
])
def test_masks_zero_exactly_the_selected_channels(name, cuts):
  model, params, state = initialised(name)
  x = jax.random.uniform(jax.random.key(3), (2, *model.input_shape))
  apply = jax.jit(lambda p, masks: model.apply(p, state, x, False, masks=masks))
  shapes = jax.eval_shape(lambda: model.apply(params, state, x, False)[2])
  masks = {node: jnp.ones(shapes[node].shape[-1]).at[jnp.array(ks)].set(0.0)
           for node, ks, _ in cuts}
  ones = jax.tree.map(jnp.ones_like, masks)
  logits, _, features = apply(params, ones)
  masked_logits, _, masked_features = apply(params, masks)
  cut = params
  for node, _, consumers in cuts:
    cut = cut_inputs(cut, consumers, masks[node])
  np.testing.assert_allclose(masked_logits, apply(cut, ones)[0], rtol=1e-4, atol=1e-5)
  assert not np.allclose(masked_logits, logits, atol=1e-4)
  # A node records its unmasked value (the first masked node: nothing upstream is masked).
  np.testing.assert_array_equal(masked_features[cuts[0][0]], features[cuts[0][0]])
  if name == 'cnn':  # an all-ones mask is the unmasked forward
    unmasked = jax.jit(lambda p: model.apply(p, state, x, False)[0])(params)
    np.testing.assert_allclose(unmasked, logits, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="unknown nodes \\['Z'\\]"):
    jax.eval_shape(lambda: model.apply(params, state, x, False, masks={'Z': jnp.ones(8)}))


def test_stable_loss_vanishes_at_coinciding_points_and_reaches_only_layers_up_to_the_node():
  model, params, state = initialised('cnn')
  x = jax.random.uniform(jax.random.key(4), (4, *model.input_shape))
  delta = EPS * jnp.sign(jax.random.normal(jax.random.key(5), x.shape))

  @jax.jit
  def values_and_grads(params):
    def loss(params, d_adv, d_start, detach_start):
      node = lambda d: model.apply(params, state, x + d, True)[2]['B']
      start = node(d_start)
      return stable_loss(node(d_adv), jax.lax.stop_gradient(start) if detach_start else start)
    grad = jax.value_and_grad(loss)
    return (grad(params, delta, delta, False), grad(params, delta, 0 * x, False),
            grad(params, delta, 0 * x, True))

  (same, same_grads), (value, grads), (_, fixed) = values_and_grads(params)
  assert float(same) == 0.0
  assert all(not np.any(g) for g in jax.tree.leaves(same_grads))
  assert float(value) > 0
  for layer, g in grads.items():
    reached = any(np.any(leaf) for leaf in jax.tree.leaves(g))
    assert reached == (layer in ('conv0', 'bn0', 'conv1', 'bn1')), layer
  # Both forwards are differentiated: a fixed (stop-gradient) start gives other gradients.
  assert not np.allclose(fixed['conv0']['kernel'], grads['conv0']['kernel'])


def test_co_loss_sign_and_bound():
  a, b = fixed_features()
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  labels = jnp.array([0, 1])
  channels = jnp.array([0.0, 0.0, 1.0])
  ce = float(cross_entropy(logits, labels).mean())
  exact = co_loss(logits, labels, a, b, channels, alpha3=1.0)
  np.testing.assert_allclose(exact, ce - 20 / 12, rtol=1e-6)   # CE − L_stable(C_p), N·H·W = 6
  np.testing.assert_allclose(exact, ce - stable_loss(a, b, alpha3=1.0, channels=channels),
                             rtol=1e-6)
  bounded = co_loss(logits, labels, a, b, channels, alpha3=1.0, saturation=100.0)
  np.testing.assert_allclose(bounded, ce - np.tanh(100 * 20 / 12) / 100, rtol=1e-6)
  small = 1e-3 * a
  np.testing.assert_allclose(co_loss(logits, labels, small, 0 * a, channels, saturation=100.0),
                             co_loss(logits, labels, small, 0 * a, channels, saturation=None),
                             rtol=1e-3)
  # The gradient pushes the C_p activations apart (descent raises |a − b|) and leaves the others.
  g = jax.grad(lambda f: co_loss(logits, labels, f, b, channels, saturation=None))(a)
  assert np.all(np.asarray(g[..., :2]) == 0)
  diff = np.asarray(a - b)[..., 2]
  assert np.all(np.asarray(g[..., 2])[diff != 0] * diff[diff != 0] < 0)


def feature_config(**fields):
  c = default_config().method
  c.update(fields)
  return c


def test_methods_resolve(tmp_path):
  fd = resolve_method(feature_config(name='fd'), EPS)
  assert fd.mep is not None and (fd.stable.alpha3, fd.stable.node) == (200.0, 'B')
  fgsm = resolve_method(feature_config(name='fgsm', stable=dict(alpha3=100.0)), EPS)
  assert fgsm.stable.alpha3 == 100.0 and fgsm.attack.init == 'zero' and fgsm.mep is None
  with pytest.raises(ValueError, match='co.tact_file'):
    resolve_method(feature_config(name='induce_co'), EPS)
  with pytest.raises(FileNotFoundError, match='--mode=analyze'):
    missing = str(tmp_path / 'no.npz')
    resolve_method(feature_config(name='induce_co', co=dict(tact_file=missing)), EPS)
  path = str(tmp_path / 'tact.npz')
  np.savez(path, A=np.zeros(4), B=np.array([0.1, 0.9, 0.5, 0.95, 0.2, 0.3, 0.4, 0.0, 0.6, 0.7]))
  co = resolve_method(feature_config(name='induce_co', co=dict(tact_file=path, percent=20.0)),
                      EPS).co
  assert co.channels == (1, 3) and co.num_channels == 10 and co.saturation == 0.0
  np.testing.assert_array_equal(co.indicator(), np.eye(10)[[1, 3]].sum(0))
  with pytest.raises(ValueError, match='only one'):
    resolve_method(feature_config(name='fgsm', co=dict(tact_file=path),
                                  stable=dict(alpha3=200.0)), EPS)
  with pytest.raises(ValueError, match="no T_act of node 'C'"):
    resolve_method(feature_config(name='fgsm', co=dict(tact_file=path, node='C')), EPS)


def tiny_cnn():
  cfg = ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2, batchnorm=True))
  model = build_model(cfg, DATASET_INFOS['fashion_mnist'])
  return model, init_train_state(model, jax.random.key(0))


@pytest.mark.parametrize('component', ['stable', 'co'])
def test_fgsm_step_with_feature_loss_differentiates_through_both_forwards(component, tmp_path):
  model, ts = tiny_cnn()
  path = str(tmp_path / 'tact.npz')
  np.savez(path, B=np.array([0.1, 0.9, 0.3, 0.2]))
  fields = ({'stable': dict(alpha3=200.0)} if component == 'stable' else
            {'co': dict(tact_file=path, percent=25.0)})
  method = resolve_method(feature_config(name='fgsm', **fields), EPS)
  schedule = optim.Schedule('constant', lr_max=0.1, total_steps=4, steps_per_epoch=2)
  step = jax.jit(make_train_step(model, method, schedule, weight_decay=5e-4, augment_mode='none',
                                 key=jax.random.key(1)))
  images = jax.random.randint(jax.random.key(2), (8, 28, 28, 1), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(8) % 10
  after, metrics = step(ts, images, labels, jnp.arange(8))
  # By hand: FGSM from 0 on the unmasked model (train-mode BN), then at x + δ either
  # CE + L_stable(M_B(x + δ), M_B(x)) or CE + L_co with channel 1 of B masked, differentiated
  # through both forwards.
  x = images.astype(jnp.float32) / 255
  channels = jnp.array([0.0, 1.0, 0.0, 0.0])
  masks = {'B': 1 - channels} if component == 'co' else None

  @jax.jit
  def by_hand(params):
    def start(d):
      logits, st, _ = model.apply(params, ts.batch_stats, x + d, True)
      return cross_entropy(logits, labels).mean(), st
    g, st1 = jax.grad(start, has_aux=True)(jnp.zeros_like(x))
    delta = jnp.clip(x + EPS * jnp.sign(g), 0, 1) - x

    def loss(params):
      start_b = model.apply(params, ts.batch_stats, x, True)[2]['B']
      logits, _, feats = model.apply(params, st1, x + delta, True)
      if component == 'stable':
        term = stable_loss(feats['B'], start_b, alpha3=200.0)
        return cross_entropy(logits, labels).mean() + term, term
      # L_co supplements the base loss: CE at x + δ (unmasked) + L_co (masked forward).
      masked_logits = model.apply(params, st1, x + delta, True, masks=masks)[0]
      co = co_loss(masked_logits, labels, feats['B'], start_b, channels, alpha3=200.0)
      return cross_entropy(logits, labels).mean() + co, cross_entropy(masked_logits,
                                                                      labels).mean() - co
    return jax.value_and_grad(loss, has_aux=True)(params)

  (value, term), grads = by_hand(ts.params)
  hyper = schedule(ts.step)  # torch SGD: w − lr·(μ·b + ∇ + wd·w)
  params = jax.tree.map(lambda w, b, g: w - hyper.lr * (hyper.momentum * b + g + 5e-4 * w),
                        ts.params, ts.opt_state.trace, grads)
  logged = metrics['stable_loss'] if component == 'stable' else metrics['co_difference']
  np.testing.assert_allclose(logged, term, rtol=1e-4)
  np.testing.assert_allclose(metrics['loss'], value, rtol=1e-4)
  assert float(term) > 0
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_co_gradient_is_the_base_ce_gradient_plus_the_co_gradient(tmp_path):
  """L_co is a supplement (Eq. 9: "the supplemental constraint for Eq. (1)"): the step's
  gradient (the momentum buffer after one step without weight decay) is ∇ CE(f(x + δ)) +
  ∇ L_co, not ∇ L_co alone."""
  model, ts = tiny_cnn()
  path = str(tmp_path / 'tact.npz')
  np.savez(path, B=np.array([0.1, 0.2, 0.9, 0.3]))
  method = resolve_method(feature_config(name='fgsm', co=dict(tact_file=path, percent=25.0)), EPS)
  schedule = optim.Schedule('constant', lr_max=0.1, total_steps=4, steps_per_epoch=2)
  step = make_train_step(model, method, schedule, weight_decay=0.0, augment_mode='none',
                         key=jax.random.key(1))
  images = jax.random.randint(jax.random.key(3), (8, 28, 28, 1), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(8) % 10
  step_grads = jax.jit(step)(ts, images, labels, jnp.arange(8))[0].opt_state.trace
  x = images.astype(jnp.float32) / 255
  channels = jnp.array([0.0, 0.0, 1.0, 0.0])
  start_grad = jax.grad(lambda d: cross_entropy(model.apply(ts.params, ts.batch_stats, x + d,
                                                            True)[0], labels).mean())
  delta = jnp.clip(x + EPS * jnp.sign(start_grad(jnp.zeros_like(x))), 0, 1) - x

  def base(params):
    return cross_entropy(model.apply(params, ts.batch_stats, x + delta, True)[0], labels).mean()

  def co(params):
    start_b = model.apply(params, ts.batch_stats, x, True)[2]['B']
    adv_b = model.apply(params, ts.batch_stats, x + delta, True)[2]['B']
    masked = model.apply(params, ts.batch_stats, x + delta, True, masks={'B': 1 - channels})[0]
    return co_loss(masked, labels, adv_b, start_b, channels, alpha3=200.0)

  base_grads, co_grads = jax.jit(lambda p: (jax.grad(base)(p), jax.grad(co)(p)))(ts.params)
  for total, b, c in zip(*map(jax.tree.leaves, (step_grads, base_grads, co_grads))):
    np.testing.assert_allclose(total, b + c, rtol=1e-4, atol=1e-6)
  head = lambda tree: np.asarray(tree['linear']['kernel'])
  assert not np.allclose(head(step_grads), head(co_grads), rtol=1e-2, atol=1e-4)


def test_noise_wrapper_distribution_and_clipping():
  identity = lambda params, state, x, train: (x, state, {})
  x = jnp.full((4000,), 0.98)
  key = jax.random.key(6)
  for kind, scale, std in (('uniform', 0.1, 0.1 / np.sqrt(3)), ('gaussian', 0.05, 0.05)):
    noisy = np.asarray(with_input_noise(identity, scale, kind)(None, {}, x, False, key)[0])
    r = noisy - 0.98
    assert abs(r.mean()) < 0.004 and abs(r.std() - std) < 0.004
    assert noisy.max() > 1.0   # not clipped by default
    if kind == 'uniform':
      assert -0.1 - 1e-6 <= r.min() < -0.099 and 0.099 < r.max() <= 0.1 + 1e-6
    clipped = np.asarray(with_input_noise(identity, scale, kind, clip=True)(None, {}, x, False,
                                                                             key)[0])
    assert clipped.max() == 1.0
    np.testing.assert_array_equal(clipped, np.minimum(noisy, 1.0))
  assert with_input_noise(identity, 0.1) == with_input_noise(identity, 0.1)   # hashable, static
  with pytest.raises(ValueError, match='noise kind'):
    with_input_noise(identity, 0.1, 'laplace')


def test_noise_evaluation_rows():
  x = jax.random.uniform(jax.random.key(7), (16, 4, 4, 1))
  params = init_mlp(jax.random.key(8), 16, scale=3.0)
  y = mlp_apply(params, {}, x, False)[0].argmax(-1)
  report = evaluate_input_noise(mlp_apply, params, {}, x, y, eps=EPS, scale=0.05,
                                attacks=('apgd-ce',), apgd_steps=3, eot_samples=4, n_draws=8,
                                checks=False, progress=False)
  assert not report['noise_free']['randomized']
  assert report['non_adaptive']['randomized'] and report['adaptive']['randomized']
  assert report['non_adaptive']['suite'] == 'transfer'
  assert report['adaptive']['settings']['eot_samples'] == 4
  assert report['non_adaptive']['settings']['eot_samples'] == 1
  assert len(report['table'].splitlines()) == 5 and 'EOT K = 4' in report['table']
  json.dumps({k: v for k, v in report.items() if k != 'table'})


@pytest.mark.slow
def test_monitor_vact_and_analysis_of_a_checkpoint(data_dir, tmp_path):  # noqa: F811
  config = tiny_config(data_dir, 'fgsm')
  config.analysis.n_train, config.analysis.n, config.analysis.pgd_steps = 32, 16, 2
  config.analysis.batch_size = 16
  data = load_dataset(config.data)
  model = build_model(config.model, data.info)
  ts = init_train_state(model, jax.random.key(0))
  workdir = str(tmp_path / 'run')
  checkpointer = Checkpointer(workdir)
  checkpointer.save(1, ts)
  checkpointer.close()
  x = data.test_images[:16].astype(np.float32) / 255
  y = data.test_labels[:16]
  # The monitor's V_act (FGSM point) equals V_act of the analysis on the same points.
  monitor = evaluate_robustness(model, ts.params, ts.batch_stats, data.test_images[:16], y,
                                PGDSettings(EPS, 2, 1), mesh=make_data_mesh(), batch_size=16,
                                progress=False)
  assert set(monitor['vact']) == set(monitor['vact_pgd']) == {'A', 'B'}
  stats = activation_statistics(model.apply, ts.params, ts.batch_stats, x, y, eps=EPS)
  for node, v in monitor['vact'].items():
    np.testing.assert_allclose(stats['vact'][node], v, rtol=1e-4)
  # --mode=analyze: statistics on training points, masking study on test points, tact.npz.
  report = analyze_run(Run.open(workdir, config))
  stored = run_log.read_json(workdir, 'analysis.json')
  assert stored['masking'] == json.loads(json.dumps(report['masking']))
  assert stored['evaluated_epoch'] == 1 and stored['settings']['n_train'] == 32
  rows = report['masking']
  assert len(rows) == 2 * 4 * 2   # nodes × α2 × selections
  reference = [r for r in rows if r['alpha2'] == 1.0]
  assert all(r['channels'] == [] for r in reference)
  assert len({(r['clean'], r['pgd'], r['pgd_adaptive']) for r in reference}) == 1
  for r in rows:
    assert r['clean'] >= max(r['fgsm'], r['pgd'], r['pgd_adaptive'])
    tact = np.asarray(stored['train_statistics']['tact'][r['node']])
    if r['selection'] == 'tact':
      assert r['channels'] == [int(k) for k in np.flatnonzero(tact > r['alpha2'])]
  with np.load(os.path.join(workdir, 'tact.npz')) as tact:
    assert set(tact.files) == {'A', 'B'} and tact['B'].shape == (4,)
  # The study on given T_act / variances: Eq. 7's channels, and the same number by variance.
  tact = {'A': np.zeros(4), 'B': np.array([0.95, 0.2, 0.6, 0.0])}
  variance = {'A': np.ones(4), 'B': np.array([0.0, 3.0, 1.0, 2.0])}
  rows = masking_study(model.apply, ts.params, ts.batch_stats, x, y, tact, variance, eps=EPS,
                       alphas=(0.5,), pgd_steps=2, batch_size=16)
  by = {(r['node'], r['selection']): r for r in rows}
  assert by[('B', 'tact')]['channels'] == [0, 2] and by[('B', 'variance')]['channels'] == [1, 3]
  assert by[('A', 'tact')]['channels'] == by[('A', 'variance')]['channels'] == []
  ones = np.ones(4, np.float32)
  direct = masked_accuracy(model.apply, ts.params, ts.batch_stats, x, y,
                           {'A': ones, 'B': np.array([0, 1, 0, 1], np.float32)}, eps=EPS,
                           pgd_steps=2, batch_size=16)
  assert direct == {k: by[('B', 'tact')][k] for k in direct}
  unmasked = masked_accuracy(model.apply, ts.params, ts.batch_stats, x, y, {'A': ones, 'B': ones},
                             eps=EPS, pgd_steps=2, batch_size=16)
  assert unmasked == {k: reference[0][k] for k in unmasked}
