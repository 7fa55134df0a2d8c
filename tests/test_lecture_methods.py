"""DART and MMA as training methods, and FOSC in the CO monitor (docs/lecture_systems.md)."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fat_jax import optim
from fat_jax.attacks import dart_threshold, fgsm_attack, fosc_at
from fat_jax.data import DATASET_INFOS, augment_with, draw_augmentation
from fat_jax.evaluate import PGDSettings, evaluate_robustness
from fat_jax.losses import cross_entropy, dart_example_weights, keras_weighted_mean, mma_loss
from fat_jax.methods import (MMA, TRADES, Clock, CrossEntropy, DynamicAttack, Method, PGDAttack,
                             init_train_state, make_train_step, resolve_method)
from fat_jax.models import build_model
from fat_jax.parallel import make_data_mesh
from tests.test_methods import config

EPS = 0.1


def tiny_model():
  return build_model(ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2, batchnorm=True)),
                     DATASET_INFOS['fashion_mnist'])


def batch(n=8):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.integers(0, 256, (n, 28, 28, 1)), jnp.uint8),
          jnp.asarray(rng.integers(0, 10, n), jnp.int32))


def one_step(model, method):
  schedule = optim.Schedule('constant', lr_max=0.05, total_steps=4, steps_per_epoch=2)
  ts = init_train_state(model, jax.random.key(0))
  step = jax.jit(make_train_step(model, method, schedule, weight_decay=5e-4,
                                 augment_mode='crop_flip', key=jax.random.key(1)))
  images, labels = batch()
  return step(ts, images, labels, jnp.arange(8))


def test_dart_resolves_to_the_official_settings():
  dart = resolve_method(config('dart'), EPS)
  assert dart.attack == DynamicAttack(EPS, EPS / 4, steps=10, c_max=0.5, control_epochs=100.0,
                                      min_steps=1, train_bn=False)
  assert dart.objective == CrossEntropy()
  with pytest.raises(ValueError, match='dart.control_epochs'):
    resolve_method(config('dart', dart=dict(control_epochs=0.0)), EPS)
  with pytest.raises(ValueError, match='attack_loss'):
    resolve_method(config('dart', attack_loss='kl'), EPS)


def test_dart_threshold_follows_the_step_epoch():
  attack = DynamicAttack(EPS, EPS / 4, c_max=0.5, control_epochs=4)
  for step, c in ((0, 0.5), (3, 0.5), (4, 0.375), (15, 0.0), (40, 0.0)):
    assert float(attack.threshold(Clock(jnp.asarray(step), 2, 20))) == pytest.approx(
        float(dart_threshold(step // 2, c_max=0.5, control_epochs=4)))
    assert float(attack.threshold(Clock(jnp.asarray(step), 2, 20))) == pytest.approx(
        max(0.5 - 0.5 * (step // 2) / 4, 0.0))


@dataclasses.dataclass(frozen=True)
class NeverStopping(DynamicAttack):
  """DART with c_t = −∞: every example takes every step."""

  def threshold(self, clock):
    del clock
    return -jnp.inf


def test_dart_without_stopping_trains_exactly_like_pgd_at():
  model = tiny_model()
  dart, m_dart = one_step(model, Method('dart', NeverStopping(EPS, EPS / 4, steps=3)))
  pgd, _ = one_step(model, Method('pgd_at', PGDAttack(EPS, EPS / 4, steps=3, train_bn=False)))
  chex.assert_trees_all_equal((dart.params, dart.batch_stats, dart.opt_state),
                              (pgd.params, pgd.batch_stats, pgd.opt_state))
  assert float(m_dart['dart_steps']) == 3.0 and float(m_dart['dart_threshold']) == -np.inf


def test_dart_logs_its_threshold_and_steps_and_stops_early_at_a_high_threshold():
  model = tiny_model()
  _, m = one_step(model, Method('dart', DynamicAttack(EPS, EPS / 4, steps=3, c_max=1e9)))
  assert float(m['dart_threshold']) == 1e9
  assert float(m['dart_steps']) == 1.0     # the first step is always taken (min_steps = 1)


def official_sample_weight(eval_logits, labels):
  """`train_models.py`: ``np.max(-batch_y * np.log(probs + 1e-12), axis=1)`` on the float32
  probabilities of ``model.predict`` (inference mode)."""
  z = np.asarray(eval_logits, np.float64)
  probs = np.exp(z - z.max(axis=1, keepdims=True))
  probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
  onehot = np.eye(probs.shape[1], dtype=np.float32)[np.asarray(labels)]
  return np.max(-onehot * np.log(probs + 1e-12), axis=1)


def keras_loss(ce, weights):
  """Keras 2.2's ``weighted_masked_objective``: mean(ℓ·w) / mean(w ≠ 0)."""
  return np.mean(ce * weights) / np.mean(weights != 0)


def test_dart_weights_are_the_official_sample_weight_reduced_as_keras_does():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(6, 10)).astype(np.float32) * 3
  labels = rng.integers(0, 10, 6)
  logits[0], labels[0] = 0.0, 3
  logits[0, 3] = 60.0                        # p_y = 1.0 in float32: the official weight is 0
  w = dart_example_weights(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(w, official_sample_weight(logits, labels), rtol=1e-5)
  assert float(w[0]) == 0.0 and np.all(np.asarray(w[1:]) > 0)
  ce = rng.uniform(0.1, 3.0, 6).astype(np.float32)
  # Σ w·ℓ / #{w ≠ 0} = Σ w·ℓ / 5: neither the batch size 6 nor the weight sum
  np.testing.assert_allclose(keras_weighted_mean(jnp.asarray(ce), w),
                             keras_loss(ce, np.asarray(w)), rtol=1e-6)
  np.testing.assert_allclose(keras_loss(ce, np.asarray(w)), np.sum(ce * np.asarray(w)) / 5,
                             rtol=1e-6)
  assert float(keras_weighted_mean(jnp.asarray(ce), jnp.zeros(6))) == 0.0
  np.testing.assert_allclose(keras_weighted_mean(jnp.asarray(ce), jnp.ones(6)), ce.mean(),
                             rtol=1e-6)


def test_dart_trains_on_the_official_weighted_ce_without_gradient_through_the_weights():
  model = tiny_model()
  params, state = model.init(jax.random.key(0))
  images, labels = batch()
  x = images.astype(jnp.float32) / 255
  attack = DynamicAttack(EPS, EPS / 4, steps=3)
  adv = attack(model, params, state, x, labels, jax.random.key(3), {}, None,
               Clock(jnp.asarray(2), 2, 4))                     # epoch 1: weighted
  x_adv = x + adv.delta
  w = official_sample_weight(model.apply(params, state, x_adv, False)[0], labels)
  np.testing.assert_allclose(adv.example_weights, w, rtol=1e-5)
  assert float(adv.metrics['dart_weight']) == pytest.approx(w.mean(), rel=1e-5)

  def objective(p):   # the weights recomputed from p: their gradient must not reach p
    weights = dart_example_weights(model.apply(p, state, x_adv, False)[0], labels)
    logits = model.apply(p, adv.state, x_adv, True)[0]
    return CrossEntropy()({'adv': logits}, labels, None, example_weights=weights)[0]

  def official(p, weights):
    ce = cross_entropy(model.apply(p, adv.state, x_adv, True)[0], labels)
    return jnp.sum(weights * ce) / np.count_nonzero(w)

  def through_the_weights(p):
    logits = model.apply(p, state, x_adv, False)[0]
    weights = -jnp.log(jax.nn.softmax(logits)[jnp.arange(len(labels)), labels] + 1e-12)
    return official(p, weights)

  ce = np.asarray(cross_entropy(model.apply(params, adv.state, x_adv, True)[0], labels))
  np.testing.assert_allclose(objective(params), keras_loss(ce, w), rtol=1e-5)
  expected = jax.grad(official)(params, jnp.asarray(w))
  chex.assert_trees_all_close(jax.grad(objective)(params), expected, rtol=1e-4, atol=1e-7)
  leaves = zip(jax.tree.leaves(jax.grad(through_the_weights)(params)), jax.tree.leaves(expected))
  assert any(not np.allclose(a, b, rtol=1e-3) for a, b in leaves)  # the check can fail


def test_the_dart_step_logs_the_weighted_loss_from_epoch_1_and_the_plain_ce_before():
  model = tiny_model()
  images, labels = batch()
  attack = DynamicAttack(EPS, EPS / 4, steps=3)
  schedule = optim.Schedule('constant', lr_max=0.05, total_steps=4, steps_per_epoch=2)
  key = jax.random.key(1)
  step = jax.jit(make_train_step(model, Method('dart', attack), schedule, weight_decay=5e-4,
                                 augment_mode='none', key=key))
  ts = init_train_state(model, jax.random.key(0))
  for at in (1, 2):   # epoch 0 (unweighted), epoch 1 (weighted)
    ts_at = ts._replace(step=jnp.asarray(at))
    _, metrics = step(ts_at, images, labels, jnp.arange(8))
    aug_key, init_key, _ = jax.random.split(jax.random.fold_in(key, at), 3)
    x = augment_with(draw_augmentation(aug_key, images, mode='none'), images)
    adv = attack(model, ts.params, ts.batch_stats, x, labels, init_key, {}, None,
                 Clock(jnp.asarray(at), 2, 2))
    ce = np.asarray(cross_entropy(model.apply(ts.params, adv.state, x + adv.delta, True)[0],
                                  labels))
    w = official_sample_weight(model.apply(ts.params, ts.batch_stats, x + adv.delta, False)[0],
                               labels) if at >= 2 else np.ones(8, np.float32)
    np.testing.assert_allclose(metrics['loss'], keras_loss(ce, w), rtol=1e-5)
    np.testing.assert_allclose(metrics['ce'], ce.mean(), rtol=1e-5)
  assert abs(float(metrics['loss']) - float(metrics['ce'])) > 1e-3   # epoch 1 is weighted


def test_dart_weighting_is_a_config_value_and_refused_with_another_objective():
  assert resolve_method(config('dart'), EPS).attack.weighting == 'ce'
  assert resolve_method(config('dart', dart=dict(weighting='none')), EPS).attack.weighting == 'none'
  with pytest.raises(ValueError, match='dart.weighting'):
    resolve_method(config('dart', dart=dict(weighting='sum')), EPS)
  with pytest.raises(ValueError, match="dart.weighting='none'"):
    resolve_method(config('dart', trades=dict(beta=6.0)), EPS)
  trades_points = resolve_method(config('dart', trades=dict(beta=6.0), dart=dict(weighting='none')),
                                 EPS)
  assert trades_points.objective == TRADES(6.0)
  model = tiny_model()
  _, m = one_step(model, Method('dart', DynamicAttack(EPS, EPS / 4, steps=3, weighting='none')))
  assert 'dart_weight' not in m and float(m['loss']) == float(m['ce'])


def test_mma_is_its_own_objective_chosen_by_name():
  mma = resolve_method(config('mma'), EPS)
  assert mma.objective == MMA() and mma.attack == PGDAttack(EPS, EPS / 4, steps=10)
  with pytest.raises(ValueError, match='one training objective'):
    resolve_method(config('mma', trades=dict(beta=6.0)), EPS)
  rng = np.random.default_rng(1)
  clean, adv = (jnp.asarray(rng.normal(size=(6, 10)), jnp.float32) for _ in range(2))
  labels = jnp.asarray(rng.integers(0, 10, 6))
  loss, terms = MMA()({'clean': clean, 'adv': adv}, labels, None)
  expected, parts = mma_loss(clean, adv, labels)
  assert float(loss) == float(expected) and float(terms['mma_correct']) == float(parts.correct)
  assert MMA().forward_order(awp=False) == ('clean', 'adv')


@pytest.mark.slow
def test_the_monitor_logs_the_mean_fosc_of_its_fgsm_and_pgd_points():
  model = tiny_model()
  params, state = model.init(jax.random.key(0))
  images, labels = batch(16)
  settings = PGDSettings(EPS, steps=5, restarts=1)
  r = evaluate_robustness(model, params, state, np.asarray(images), np.asarray(labels), settings,
                          mesh=make_data_mesh(), batch_size=16, progress=False)
  x = images.astype(jnp.float32) / 255
  key = jax.random.fold_in(jax.random.key(0), 0)
  fgsm = fgsm_attack(model.apply, params, state, x, labels, key, eps=EPS, alpha=EPS, train=False)
  expected = fosc_at(model.apply, params, state, x, labels, fgsm.delta, eps=EPS).mean()
  np.testing.assert_allclose(r['fosc_fgsm'], float(expected), rtol=1e-5)
  assert r['fosc_fgsm'] >= 0 and r['fosc_pgd'] >= 0
