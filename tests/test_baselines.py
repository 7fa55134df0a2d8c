"""TRADES, MART, AWP, ZeroGrad and ATAS (docs/protocol.md §2.5): losses against hand values,
the pieces' invariants, and train steps against written-out transcriptions of the official
sequences."""
import dataclasses
import functools
import importlib

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fat_jax import optim
from fat_jax.attacks import atas_step_sizes, kl_attack, zero_small_gradients
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS, augment_with, draw_augmentation, to_batch_frame
from fat_jax.losses import cross_entropy
from fat_jax.losses.mart import mart_loss
from fat_jax.losses.trades import trades_loss
from fat_jax.methods import (AWP, init_examples, init_train_state, make_train_step,
                             resolve_method)
from fat_jax.methods.training_attacks import atas_reset_period
from fat_jax.models import build_model

LOGITS_CLEAN = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0]])
LOGITS_ADV = np.array([[1.0, 1.5, -0.5], [0.0, 0.0, 1.0], [0.5, 2.0, 2.5]])
LABELS = np.array([0, 2, 1])


def softmax_np(z):
  e = np.exp(z - z.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def test_trades_loss_against_hand_values():
  p, q = softmax_np(LOGITS_CLEAN), softmax_np(LOGITS_ADV)
  ce = -np.log(p[np.arange(3), LABELS]).mean()
  kl = (p * np.log(p / q)).sum(1).mean()  # KLDivLoss(sum) / batch
  loss, terms = trades_loss(jnp.asarray(LOGITS_CLEAN), jnp.asarray(LOGITS_ADV),
                            jnp.asarray(LABELS), beta=6.0)
  np.testing.assert_allclose([terms.natural, terms.robust, loss], [ce, kl, ce + 6 * kl],
                             rtol=1e-5)
  # Both logits carry gradient (p(x) is not detached).
  g_clean = jax.grad(lambda z: trades_loss(z, jnp.asarray(LOGITS_ADV), jnp.asarray(LABELS),
                                           beta=6.0)[0])(jnp.asarray(LOGITS_CLEAN))
  g_adv = jax.grad(lambda z: trades_loss(jnp.asarray(LOGITS_CLEAN), z, jnp.asarray(LABELS),
                                         beta=6.0)[0])(jnp.asarray(LOGITS_ADV))
  assert np.abs(g_clean).max() > 0 and np.abs(g_adv).max() > 0


def test_mart_loss_against_hand_values():
  p, q = softmax_np(LOGITS_CLEAN), softmax_np(LOGITS_ADV)
  # The most likely wrong class under x': example 0 → 1, example 1 → 0 or 1 (tie: torch.argsort
  # order is unspecified, the value is the same), example 2 → 2.
  wrong_prob = np.array([q[0, 1], q[1, 0], q[2, 2]])
  bce = -np.log(q[np.arange(3), LABELS]).mean() - np.log(1.0001 - wrong_prob + 1e-12).mean()
  kl = (p * (np.log(p) - np.log(q + 1e-12))).sum(1)
  robust = (kl * (1.0000001 - p[np.arange(3), LABELS])).mean()
  loss, terms = mart_loss(jnp.asarray(LOGITS_CLEAN), jnp.asarray(LOGITS_ADV),
                          jnp.asarray(LABELS), beta=5.0)
  np.testing.assert_allclose([terms.boosted_ce, terms.robust, loss],
                             [bce, robust, bce + 5 * robust], rtol=1e-5)


@pytest.mark.parametrize('q', [0.0, 0.35, 0.5])
def test_zerograd_zeroes_exactly_the_coordinates_below_the_quantile(q):
  rng = np.random.default_rng(0)
  # Per example a shuffled ±(1..20): the linear-interpolated q-quantile of |g| is 1 + 19q.
  grad = np.stack([rng.permutation(np.arange(1, 21)) * rng.choice([-1, 1], 20)
                   for _ in range(3)]).astype(np.float32).reshape(3, 5, 4, 1)
  out = np.asarray(zero_small_gradients(jnp.asarray(grad), q))
  threshold = 1 + 19 * q
  np.testing.assert_allclose(np.quantile(np.abs(grad).reshape(3, -1), q, axis=1), threshold)
  small = np.abs(grad) < threshold
  assert np.all(out[small] == 0) and np.array_equal(out[~small], grad[~small])
  assert small.sum() == 3 * int(np.ceil(threshold - 1))  # q = 0: nothing; 0.35: 7 of 20 each


def test_atas_step_sizes_stay_in_bounds_and_follow_the_formula():
  eps = 8 / 255
  c = default_config().method
  c.name = 'atas'
  spec = resolve_method(c, eps).atas
  assert (spec.min_step, spec.max_step, spec.scale) == pytest.approx((4 / 255, 14 / 255, 16 / 255))
  # Gradients from tiny to huge norms: the steps saturate at both bounds, in between the formula.
  scales = jnp.asarray([0.0, 1e-4, 1e-2, 1e-1, 1e3])
  grad = scales[:, None] * jnp.ones((5, 16)) / 4.0  # ‖g_i‖ = scale_i
  previous = jnp.asarray([0.0, 0.0, 1e-4, 0.0, 0.0])
  steps, norm = atas_step_sizes(grad, previous, c=spec.c, beta=spec.beta, scale=spec.scale,
                                min_step=spec.min_step, max_step=spec.max_step)
  v = 0.5 * np.asarray(scales) ** 2 + 0.5 * np.asarray(previous)
  np.testing.assert_allclose(norm, v, rtol=1e-5)
  expected = np.clip(16 / 255 / (1 + np.sqrt(v) / 0.01), 4 / 255, 14 / 255)
  np.testing.assert_allclose(steps, expected, rtol=1e-5)
  assert np.all((np.asarray(steps) >= 4 / 255 - 1e-9) & (np.asarray(steps) <= 14 / 255 + 1e-9))
  np.testing.assert_allclose(steps, np.array([14, 14, 8, 4, 4]) / 255, rtol=1e-5)  # v = 1e-4: 8/255


def test_atas_resets_when_the_official_loop_does():
  # ATAS.py: before 1-based epoch E, reset if E % 10 == 0 and E != epochs (30).
  resets, expected = 0, []
  for e in range(1, 31):
    resets += e % 10 == 0 and e != 30
    expected.append(resets)
  assert [int(atas_reset_period(e, 10, 30)) for e in range(30)] == expected == (
      [0] * 9 + [1] * 10 + [2] * 11)


def test_kl_attack_stays_in_the_ball_and_leaves_eval_statistics_alone(tiny):
  model, ts, images, labels = tiny
  x = images.astype(jnp.float32) / 255
  adv = kl_attack(model.apply, ts.params, ts.batch_stats, x, jax.random.key(0), eps=0.1,
                  alpha=0.03, steps=3)
  delta = np.asarray(adv.delta)
  assert np.abs(delta).max() <= 0.1 + 1e-6 and np.abs(delta).max() > 0.05
  assert (np.asarray(x) + delta).min() >= 0 and (np.asarray(x) + delta).max() <= 1 + 1e-6
  for a, b in zip(jax.tree.leaves(adv.state), jax.tree.leaves(ts.batch_stats)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('fields, match', [
    (dict(name='trades', mart=dict(beta=5.0)), 'one training objective'),
    (dict(name='pgd_at', zerograd=dict(q=0.35)), 'single-step'),
    (dict(name='zerograd', zerograd=dict(q=1.0)), 'quantile'),
    (dict(name='atas', zerograd=dict(q=0.35)), 'take their own steps'),
    (dict(name='n_fgsm', awp=dict(gamma=0.01), lap=dict(beta=0.01)), 'AWP'),
    (dict(name='fgsm_rs', robust_overfitting_forwards=True), 'multi-step CE'),
    (dict(name='atas', atas=dict(min_step=2.0)), 'atas.min_step'),
])
def test_incompatible_baseline_settings_are_rejected(fields, match):
  c = default_config().method
  c.update(fields)
  with pytest.raises(ValueError, match=match):
    resolve_method(c, 8 / 255)


def test_awp_perturbs_exactly_the_kernels_of_every_model():
  # The official AWP perturbs every `weight` with ndim > 1: the models' explicit layer order.
  for name, data in (('preact_resnet18', 'cifar10'), ('resnet18', 'cifar10'),
                     ('mnist_net', 'mnist'), ('cnn', 'fashion_mnist')):
    model = build_model(ml_collections.ConfigDict(dict(name=name, width=2, depth=3,
                                                       batchnorm=True)), DATASET_INFOS[data])
    params = jax.eval_shape(model.init, jax.random.key(0))[0]
    kernels = {tuple(k.key for k in path) for path, leaf in
               jax.tree_util.tree_leaves_with_path(params) if leaf.ndim > 1}
    assert set(model.weight_layer_order(params)) == kernels


# --------------------------------------------------------------- train steps, written out

EPS, WD = 0.1, 5e-4


@pytest.fixture(scope='module')
def tiny():
  cfg = ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2, batchnorm=True))
  model = build_model(cfg, DATASET_INFOS['fashion_mnist'])
  state = init_train_state(model, jax.random.key(0))
  rng = np.random.default_rng(1)  # host draws: no compilation per leaf shape
  momentum = jax.tree.map(lambda w: jnp.asarray(0.1 * rng.normal(size=w.shape), w.dtype),
                          state.params)
  stats = jax.tree.map(lambda s: s + jnp.asarray(0.1 * rng.uniform(size=s.shape), s.dtype),
                       state.batch_stats)
  images = jnp.asarray(rng.integers(0, 256, (8, 28, 28, 1)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
  step = jnp.asarray(7, jnp.int32)
  ts = state._replace(step=step, opt_state=optim.TorchSGDState(step, momentum), batch_stats=stats)
  return model, ts, images, labels


SCHEDULE = optim.Schedule('cyclic', lr_max=0.2, total_steps=40, steps_per_epoch=4)


def method_of(name, **fields):
  c = default_config().method
  c.name = name
  c.update(fields)
  return resolve_method(c, EPS)


def run_step(model, method, ts, images, labels, key, augment_mode='none'):
  step = jax.jit(make_train_step(model, method, SCHEDULE, weight_decay=WD,
                                 augment_mode=augment_mode, key=key))
  return step(ts, images, labels, jnp.arange(len(labels)))


def keys_of(key, step):
  """(aug, init, align) keys of the step, as `make_train_step` splits them."""
  return jax.random.split(jax.random.fold_in(key, step), 3)


def sgd(ts, params, grads):
  """torch SGD: b' = μ·b + ∇ + wd·w, w − lr·b'."""
  hyper = SCHEDULE(ts.step)
  buffers = jax.tree.map(lambda b, g, w: hyper.momentum * b + g + WD * w, ts.opt_state.trace,
                         grads, params)
  return jax.tree.map(lambda w, b: w - hyper.lr * b, params, buffers), buffers


def kl_sum(p_logits, q_logits):
  log_p, log_q = jax.nn.log_softmax(p_logits), jax.nn.log_softmax(q_logits)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q))


def manual_trades_step(model, ts, x, y, key, *, alpha, steps, beta, awp_gamma=None):
  """trades.py's ``trades_loss`` (and the TRADES-AWP loop of `csdongxian/AWP`) written out."""
  f = model.apply
  _, init_key, _ = keys_of(key, ts.step)
  x_adv = x + 0.001 * jax.random.normal(init_key, x.shape)
  for _ in range(steps):  # model.eval(): running statistics, untouched
    grad = jax.grad(lambda z: kl_sum(f(ts.params, ts.batch_stats, x, False)[0],
                                     f(ts.params, ts.batch_stats, z, False)[0]))(x_adv)
    x_adv = jnp.clip(jnp.clip(x_adv + alpha * jnp.sign(grad), x - EPS, x + EPS), 0, 1)

  def trades(params, order):
    outs, st = {}, ts.batch_stats
    for name in order:
      logits, st, _ = f(params, st, x_adv if name == 'adv' else x, True)
      outs.setdefault(name, logits)
    loss = (cross_entropy(outs['clean'], y).mean()
            + beta * kl_sum(outs['clean'], outs['adv']) / len(y))
    return loss, st

  params, deltas = ts.params, None
  if awp_gamma is not None:  # TradesAWP.calc_awp: one SGD step of a proxy on −loss
    g = jax.grad(lambda p: -trades(p, ('clean', 'adv', 'clean'))[0])(params)
    proxy = jax.tree.map(lambda w, d: w - 0.1 * d, params, g)
    deltas = jax.tree.map(lambda w, p: awp_gamma * jnp.linalg.norm(w) * (p - w)
                          / (jnp.linalg.norm(p - w) + 1e-20) if w.ndim > 1 else 0 * w,
                          params, proxy)
    params = jax.tree.map(jnp.add, params, deltas)
    order = ('adv', 'clean', 'clean')  # logits_adv, then model(x_natural) twice
  else:
    order = ('clean', 'adv', 'clean')  # logits, then model(x_adv), model(x_natural)
  grads, st = jax.grad(lambda p: trades(p, order), has_aux=True)(params)
  params, _ = sgd(ts, params, grads)
  if deltas is not None:
    params = jax.tree.map(jnp.subtract, params, deltas)
  return params, st


def manual_mart_step(model, ts, x, y, key, *, alpha, steps, beta):
  """mart.py's ``mart_loss`` written out."""
  f = model.apply
  _, init_key, _ = keys_of(key, ts.step)
  x_adv = x + 0.001 * jax.random.normal(jax.random.fold_in(init_key, 0), x.shape)
  for _ in range(steps):
    grad = jax.grad(lambda z: cross_entropy(f(ts.params, ts.batch_stats, z, False)[0],
                                            y).mean())(x_adv)
    x_adv = jnp.clip(jnp.clip(x_adv + alpha * jnp.sign(grad), x - EPS, x + EPS), 0, 1)

  def mart(params):
    logits, st, _ = f(params, ts.batch_stats, x, True)
    logits_adv, st, _ = f(params, st, x_adv, True)
    adv_probs = jax.nn.softmax(logits_adv)
    top2 = jnp.argsort(adv_probs, axis=1)[:, -2:]
    new_y = jnp.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = (cross_entropy(logits_adv, y).mean()
                - jnp.take_along_axis(jnp.log(1.0001 - adv_probs + 1e-12), new_y[:, None],
                                      1).mean())
    nat_probs = jax.nn.softmax(logits)
    true_probs = jnp.take_along_axis(nat_probs, y[:, None], 1)[:, 0]
    kl = jnp.sum(nat_probs * (jnp.log(nat_probs) - jnp.log(adv_probs + 1e-12)), 1)
    return loss_adv + beta * jnp.sum(kl * (1.0000001 - true_probs)) / len(y), st

  grads, st = jax.grad(mart, has_aux=True)(ts.params)
  return sgd(ts, ts.params, grads)[0], st


def manual_at_awp_step(model, ts, x, y, key, *, alpha, steps, gamma):
  """AT-AWP as `csdongxian/AWP` runs it on `locuslab/robust_overfitting`'s loop: PGD in train
  mode, attack_pgd's restart-loss forward, the proxy's ascent step, the step at w + v, w − v,
  and the clean forward of the accuracy log."""
  f = model.apply
  _, init_key, _ = keys_of(key, ts.step)
  delta = jax.random.uniform(jax.random.fold_in(init_key, 0), x.shape, minval=-EPS, maxval=EPS)
  delta = jnp.clip(x + delta, 0, 1) - x
  st = ts.batch_stats
  for _ in range(steps):
    (_, st), grad = jax.value_and_grad(
        lambda d: (lambda o: (cross_entropy(o[0], y).mean(), o[1]))(f(ts.params, st, x + d, True)),
        has_aux=True)(delta)
    delta = jnp.clip(jnp.clip(delta + alpha * jnp.sign(grad), -EPS, EPS), -x, 1 - x)
  st = f(ts.params, st, x + delta, True)[1]  # all_loss = CE(model(X + delta))
  x_adv = jnp.clip(x + delta, 0, 1)
  ce = lambda p, s: (lambda o: (cross_entropy(o[0], y).mean(), o[1]))(f(p, s, x_adv, True))
  g = jax.grad(lambda p: -ce(p, st)[0])(ts.params)
  proxy = jax.tree.map(lambda w, d: w - 0.01 * d, ts.params, g)  # SGD(lr=0.01) on −CE
  deltas = jax.tree.map(lambda w, p: gamma * jnp.linalg.norm(w) * (p - w)
                        / (jnp.linalg.norm(p - w) + 1e-20) if w.ndim > 1 else 0 * w,
                        ts.params, proxy)
  perturbed = jax.tree.map(jnp.add, ts.params, deltas)
  grads, st = jax.grad(ce, has_aux=True)(perturbed, st)
  params = jax.tree.map(jnp.subtract, sgd(ts, perturbed, grads)[0], deltas)
  st = f(params, st, x, True)[1]  # output = model(normalize(X))
  return params, st, perturbed, grads


assert_trees_close = functools.partial(chex.assert_trees_all_close, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize('awp', [False, True])
def test_trades_step_follows_the_official_sequence(tiny, awp):
  model, ts, images, labels = tiny
  key, alpha = jax.random.key(5), 0.03
  fields = dict(steps=2, alpha=alpha / EPS)
  if awp:
    fields.update(awp=dict(gamma=0.005))
  after, metrics = run_step(model, method_of('trades', **fields), ts, images, labels, key)
  x = images.astype(jnp.float32) / 255
  params, stats = jax.jit(lambda ts: manual_trades_step(
      model, ts, x, labels, key, alpha=alpha, steps=2, beta=6.0,
      awp_gamma=0.005 if awp else None))(ts)
  assert_trees_close(after.params, params)
  assert_trees_close(after.batch_stats, stats)  # forwards' order: nat, adv, nat (AWP: adv first)
  assert float(metrics['trades_robust']) > 0


def test_mart_step_follows_the_official_sequence(tiny):
  model, ts, images, labels = tiny
  key, alpha = jax.random.key(6), 0.03
  after, _ = run_step(model, method_of('mart', steps=2, alpha=alpha / EPS), ts, images, labels,
                      key)
  x = images.astype(jnp.float32) / 255
  params, stats = jax.jit(lambda ts: manual_mart_step(model, ts, x, labels, key, alpha=alpha,
                                                      steps=2, beta=5.0))(ts)
  assert_trees_close(after.params, params)
  assert_trees_close(after.batch_stats, stats)


def test_at_awp_step_follows_the_official_sequence_and_restores_the_weights(tiny):
  model, ts, images, labels = tiny
  key = jax.random.key(7)
  # 4 steps per epoch: step 7 (epoch 1) perturbs, step 3 (epoch 0) is in the warm-up.
  method = method_of('pgd_at', steps=2, awp=dict(gamma=0.01, warmup_epochs=1),
                     robust_overfitting_forwards=True)
  step = jax.jit(make_train_step(model, method, SCHEDULE, weight_decay=WD, augment_mode='none',
                                 key=key))
  x = images.astype(jnp.float32) / 255
  manual = jax.jit(lambda ts, gamma: manual_at_awp_step(model, ts, x, labels, key,
                                                        alpha=0.25 * EPS, steps=2, gamma=gamma))
  after, metrics = step(ts, images, labels, jnp.arange(8))
  params, stats, perturbed, grads = manual(ts, 0.01)
  assert_trees_close(after.params, params)
  assert_trees_close(after.batch_stats, stats)
  # Perturb–step–restore = a plain SGD step whose gradient and weight decay are taken at w + v.
  hyper = SCHEDULE(ts.step)
  plain = jax.tree.map(lambda w, b, g, wv: w - hyper.lr * (hyper.momentum * b + g + WD * wv),
                       ts.params, ts.opt_state.trace, grads, perturbed)
  assert_trees_close(after.params, plain)
  for w, p in zip(jax.tree.leaves(ts.params), jax.tree.leaves(perturbed)):
    moved = np.linalg.norm(np.asarray(p) - np.asarray(w))
    if w.ndim > 1:  # ‖v_l‖ = γ‖w_l‖ on the kernels, nothing on biases and BatchNorm
      assert moved == pytest.approx(0.01 * np.linalg.norm(np.asarray(w)), rel=1e-4)
    else:
      assert moved == 0.0
  assert 0 < float(metrics['awp_norm']) and 0 <= float(metrics['clean_accuracy']) <= 1
  # During the warm-up the step is plain PGD-AT (v = 0).
  three = jnp.asarray(3, jnp.int32)
  early = ts._replace(step=three, opt_state=ts.opt_state._replace(count=three))
  after, metrics = step(early, images, labels, jnp.arange(8))
  params, stats, _, _ = manual(early, 0.0)
  assert float(metrics['awp_norm']) == 0.0
  assert_trees_close(after.params, params)
  assert_trees_close(after.batch_stats, stats)


def test_zerograd_step_is_fgsm_rs_with_the_small_gradients_zeroed(tiny):
  model, ts, images, labels = tiny
  key = jax.random.key(8)
  after, _ = run_step(model, method_of('zerograd'), ts, images, labels, key)
  x = images.astype(jnp.float32) / 255
  _, init_key, _ = keys_of(key, ts.step)

  def manual(ts):  # quantile_fgsm, train mode
    delta = jax.random.uniform(init_key, x.shape, minval=-EPS, maxval=EPS)
    delta = jnp.clip(x + delta, 0, 1) - x
    (_, st), grad = jax.value_and_grad(lambda d: (lambda o: (cross_entropy(o[0], labels).mean(),
                                                             o[1]))(model.apply(
        ts.params, ts.batch_stats, x + d, True)), has_aux=True)(delta)
    flat = jnp.abs(grad).reshape(8, -1)
    q = jnp.quantile(flat, 0.35, axis=1)[:, None, None, None]
    grad = jnp.where(jnp.abs(grad) < q, 0.0, grad)
    d = jnp.clip(delta + 2 * EPS * jnp.sign(grad), -EPS, EPS)
    d = jnp.clip(d, -x, 1 - x)
    grads, st = jax.grad(lambda p: (lambda o: (cross_entropy(o[0], labels).mean(), o[1]))(
        model.apply(p, st, jnp.clip(x + d, 0, 1), True)), has_aux=True)(ts.params)
    return sgd(ts, ts.params, grads)[0], st

  params, stats = jax.jit(manual)(ts)
  assert_trees_close(after.params, params)
  assert_trees_close(after.batch_stats, stats)


def test_atas_step_follows_the_official_sequence_with_crops_and_flips(tiny):
  model, ts, images, labels = tiny
  key = jax.random.key(9)
  method = method_of('atas', atas=dict(warmup_epochs=1))  # step 7, 4 steps/epoch: epoch 1, adaptive
  frame = (36, 36, 1)
  fresh = init_examples(method, 8, frame)
  stored = jax.random.uniform(jax.random.key(3), (8, *frame), minval=-EPS, maxval=EPS)
  # A state written in this reset period: no re-draw.
  examples = {'delta': stored, 'grad_norm': jnp.full((8,), 2e-3),
              'period': jnp.zeros_like(fresh['period'])}
  assert jax.tree.structure(examples) == jax.tree.structure(fresh)
  ts = ts._replace(examples=examples)
  after, metrics = run_step(model, method, ts, images, labels, key, augment_mode='crop_flip')
  aug_key, _, _ = keys_of(key, ts.step)

  def manual(ts):  # ATAS.py train(): aug, eval-mode adaptive step, train-mode CE, inverse_aug
    aug = draw_augmentation(aug_key, images, mode='crop_flip')
    nat = augment_with(aug, images)
    adv = jnp.clip(to_batch_frame(stored, aug) + nat, 0, 1)
    grad = jax.grad(lambda z: cross_entropy(model.apply(ts.params, ts.batch_stats, z, False)[0],
                                            labels).mean())(adv)
    v = jnp.sum(grad.reshape(8, -1) ** 2, 1) * 0.5 + 2e-3 * 0.5
    step = jnp.clip(1 / (1 + jnp.sqrt(v) / 0.01) * 2 * 8 / 255 * (EPS / (8 / 255)),
                    0.5 * EPS, 1.75 * EPS)
    adv = adv + step[:, None, None, None] * jnp.sign(grad)
    adv = jnp.clip(jnp.clip(adv, nat - EPS, nat + EPS), 0, 1)
    grads, st = jax.grad(lambda p: (lambda o: (cross_entropy(o[0], labels).mean(), o[1]))(
        model.apply(p, ts.batch_stats, adv, True)), has_aux=True)(ts.params)
    return sgd(ts, ts.params, grads)[0], st, v, adv - nat, aug, step

  params, stats, v, delta, aug, step = jax.jit(manual)(ts)
  assert_trees_close(after.params, params)
  assert_trees_close(after.batch_stats, stats)
  np.testing.assert_allclose(after.examples['grad_norm'], v, rtol=1e-4)
  # The stored canvas shows the new δ through this step's crop and flip, and keeps the rest.
  np.testing.assert_allclose(to_batch_frame(after.examples['delta'], aug), delta, atol=1e-6)
  outside = np.ones((8, *frame), bool)
  for i, (r, c) in enumerate(np.asarray(aug.offsets)):
    outside[i, r:r + 28, c:c + 28] = False
  np.testing.assert_array_equal(np.asarray(after.examples['delta'])[outside],
                                np.asarray(stored)[outside])
  assert float(metrics['atas_step']) == pytest.approx(float(step.mean()) / EPS, rel=1e-5)


def test_baseline_recipes_follow_the_official_defaults():
  load = lambda name: importlib.import_module(f'configs.{name}').get_config()
  trades, mart = load('trades_eps8'), load('mart_eps8')
  t = resolve_method(trades.method, trades.eps)
  assert (t.trades.beta, t.attack.steps, t.attack.train_bn, t.attack.loss) == (6.0, 10, False, 'kl')
  assert t.attack.alpha == pytest.approx(0.007) and t.attack.init_scale == 0.001
  assert (trades.num_epochs, trades.optim.milestones, trades.optim.weight_decay) == (
      76, (74,), 2e-4)
  m = resolve_method(mart.method, mart.eps)  # train_wideresnet.py
  assert (m.mart.beta, m.attack.loss, m.attack.train_bn, mart.model.name) == (6.0, 'ce', False,
                                                                               'wide_resnet')
  assert (mart.model.depth, mart.model.widen_factor, mart.model.normalize) == (34, 10, False)
  assert (mart.optim.lr_max, mart.optim.weight_decay, mart.num_epochs) == (0.1, 2e-4, 76)
  assert mart.optim.milestones == (74,)
  mart18 = importlib.import_module('configs.mart_eps8').get_config('resnet18')  # train_resnet.py
  m18 = resolve_method(mart18.method, mart18.eps)
  assert (m18.mart.beta, mart18.model.name) == (5.0, 'resnet18')
  assert (mart18.optim.lr_max, mart18.optim.weight_decay, mart18.num_epochs) == (0.01, 3.5e-3,
                                                                                 120)
  rice, awp_at, awp_trades = load('pgd_at_rice_eps8'), load('awp_pgd_at_eps8'), load(
      'awp_trades_eps8')
  r = resolve_method(rice.method, rice.eps)
  assert r.robust_overfitting_forwards and r.attack.train_bn and r.attack.alpha == pytest.approx(
      2 / 255)
  assert (rice.num_epochs, rice.optim.schedule, rice.optim.lr_max) == (200, 'piecewise', 0.1)
  assert resolve_method(awp_at.method, awp_at.eps) == dataclasses.replace(
      r, weights=AWP(gamma=0.01, warmup_epochs=0))
  a = resolve_method(awp_trades.method, awp_trades.eps)
  assert (a.awp.gamma, a.awp.warmup_epochs, a.trades.beta) == (0.005, 9, 6.0)
  assert a.attack.alpha == pytest.approx(2 / 255) and awp_trades.optim.milestones == (99, 149)
  z = load('zerograd_eps8')
  zm = resolve_method(z.method, z.eps)
  assert zm.zerograd.q == 0.35 and zm.attack.alpha == pytest.approx(16 / 255)
  assert z.optim.base_momentum == z.optim.momentum == 0.9  # the lr cycles, the momentum not
  atas = load('atas_eps8')
  am = resolve_method(atas.method, atas.eps)
  assert (am.atas.warmup_epochs, am.atas.reset_every, atas.optim.milestones) == (5, 10, (24, 28))
