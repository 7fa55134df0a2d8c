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
from fat_jax.data import DATASET_INFOS
from fat_jax.evaluate import PGDSettings, evaluate_robustness
from fat_jax.losses import mma_loss
from fat_jax.methods import (MMA, Clock, CrossEntropy, DynamicAttack, Method, PGDAttack,
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
  with pytest.raises(ValueError, match='dart_control_epochs'):
    resolve_method(config('dart', dart_control_epochs=0.0), EPS)
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


def test_mma_is_its_own_objective_chosen_by_name():
  mma = resolve_method(config('mma'), EPS)
  assert mma.objective == MMA() and mma.attack == PGDAttack(EPS, EPS / 4, steps=10)
  with pytest.raises(ValueError, match='one training objective'):
    resolve_method(config('mma', trades_beta=6.0), EPS)
  rng = np.random.default_rng(1)
  clean, adv = (jnp.asarray(rng.normal(size=(6, 10)), jnp.float32) for _ in range(2))
  labels = jnp.asarray(rng.integers(0, 10, 6))
  loss, terms = MMA()({'clean': clean, 'adv': adv}, labels, None)
  expected, parts = mma_loss(clean, adv, labels)
  assert float(loss) == float(expected) and float(terms['mma_correct']) == float(parts.correct)
  assert MMA().forward_order(awp=False) == ('clean', 'adv')


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
