"""Methods as values: composing a `Method` in Python, the config resolution giving the same
values, and the combinations refused when a method is built."""
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fat_jax import optim
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS
from fat_jax.methods import (AAER, AWP, LAP, TRADES, CrossEntropy, FGSMAttack, GradAlign,
                             KLAttack, LCo, LStable, MEPObjective, Method, PGDAttack, PriorAttack,
                             ZeroGrad, init_train_state, make_train_step, resolve_method,
                             unread_fields)
from fat_jax.models import build_model
from fat_jax.run.train import train_and_evaluate
from fat_jax.validation import ConfigError

EPS = 0.1
FGSM = FGSMAttack(EPS, EPS, init='uniform', init_scale=2.0, project=False)
PGD = PGDAttack(EPS, 0.25 * EPS, steps=3)
CO = LCo(channels=(1,), num_channels=4)


def config(name, **fields):
  c = default_config().method
  c.name = name
  c.update(fields)
  return c


def test_a_method_composed_in_python_equals_the_resolved_config():
  composed = Method('n_fgsm', FGSM, CrossEntropy(), (AAER(1.0, 1.5, 0.15), GradAlign(0.2)),
                    LAP(0.5))
  resolved = resolve_method(config('n_fgsm', lap=dict(beta=0.5),
                                   aaer=dict(lambda1=1.0, lambda2=1.5, lambda3=0.15),
                                   gradalign=dict(lam=0.2)), EPS)
  assert composed == resolved and hash(composed) == hash(resolved)
  assert resolved.lap == LAP(0.5) and resolved.awp is None and resolved.gradalign.lam == 0.2
  zerograd = resolve_method(config('zerograd'), EPS)
  assert zerograd.attack == FGSMAttack(EPS, 2 * EPS, init='uniform', zerograd=ZeroGrad(0.35))
  trades = resolve_method(config('trades', awp=dict(gamma=0.005)), EPS)
  assert isinstance(trades.attack, KLAttack) and trades.objective == TRADES(6.0)
  assert trades.weights == AWP(0.005)
  mep = resolve_method(config('fgsm_mep'), EPS)
  assert isinstance(mep.attack, PriorAttack) and mep.objective == MEPObjective(0.6, 10.0)


@pytest.mark.parametrize('build, names', [
    (lambda: Method('m', PGD, CrossEntropy(), (AAER(1.0, 1.0, 1.0),)), ('AAER', 'PGDAttack')),
    (lambda: Method('m', KLAttack(EPS, EPS, 3), TRADES(), (), LAP(0.1)), ('LAP', 'KLAttack')),
    (lambda: Method('m', PGD, MEPObjective()), ('MEPObjective', 'PGDAttack')),
    (lambda: Method('m', PGD, CrossEntropy(), (LStable(),)), ('LStable', 'PGDAttack')),
    (lambda: Method('m', FGSM, CrossEntropy(), (LStable(), CO)), ('L_stable', 'L_co')),
    (lambda: Method('m', PriorAttack(EPS, EPS), MEPObjective(), (), AWP(0.01)), ('AWP',
                                                                                 'FGSM-MEP')),
    (lambda: Method('m', FGSM, CrossEntropy(), (GradAlign(0.1), GradAlign(0.2))), ('GradAlign',)),
    (lambda: Method('m', FGSM, robust_overfitting_forwards=True), ('robust_overfitting',
                                                                   'FGSMAttack')),
])
def test_impossible_compositions_are_refused_naming_both_parts(build, names):
  with pytest.raises(ValueError) as error:
    build()
  for name in names:
    assert name in str(error.value)


@pytest.mark.parametrize('fields, names', [
    (dict(name='fgsm_mep', mart=dict(beta=5.0)), ('FGSM-MEP', 'MART')),
    (dict(name='n_fgsm', lap=dict(beta=0.1), awp=dict(gamma=0.01)), ('LAP', 'AWP')),
    (dict(name='pgd_at', zerograd=dict(q=0.35)), ('ZeroGrad', 'single-step')),
    (dict(name='fgsm_mep', steps=3), ('FGSM-MEP', 'steps=3')),
])
def test_the_config_resolution_refuses_them_too(fields, names, tmp_path):
  if fields.get('co', {}).get('tact_file'):
    fields['co']['tact_file'] = str(tmp_path / 'tact.npz')
    np.savez(fields['co']['tact_file'], B=np.array([0.1, 0.9, 0.3, 0.2]))
  with pytest.raises(ValueError) as error:
    resolve_method(config(**fields), EPS)
  for name in names:
    assert name in str(error.value)


@pytest.mark.parametrize('fields, unread', [
    (dict(name='fgsm', lap=dict(gamma=0.5), mep=dict(lam=3.0)), ['lap.gamma', 'mep.lam']),
    (dict(name='n_fgsm', lap=dict(beta=0.01, gamma=0.5)), []),
    (dict(name='pgd_at', project=False, awp=dict(warmup_epochs=2)),
     ['awp.warmup_epochs', 'project']),
    (dict(name='atas', init_scale=2.0, atas=dict(c=0.02)), ['init_scale']),
    (dict(name='fgsm', stable=dict(node='A'), co=dict(percent=5.0, node='A')),
     ['stable.node', 'co.node', 'co.percent']),
    (dict(name='fd', stable=dict(node='A'), elle=dict(decay=0.9)), ['elle.decay']),
])
def test_a_field_no_component_reads_is_named(fields, unread):
  c = config(**fields)
  lines = unread_fields(c, resolve_method(c, EPS), default_config().method)
  assert [line.split('=')[0] for line in lines] == [f'method.{f}' for f in unread]
  assert all(' does nothing without ' in line for line in lines)


def test_training_refuses_a_field_no_component_reads(tmp_path):
  c = default_config()
  c.method.name, c.method.lap.gamma = 'fgsm', 0.5
  with pytest.raises(ConfigError, match=r'method.lap.gamma=0.5 does nothing without LAP'):
    train_and_evaluate(c, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'config.json')


def test_a_composed_method_trains_with_gradalign_on_pgd():
  """A combination the config table has no name for: PGD-3 + GradAlign, with optax's SGD."""
  model = build_model(ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2,
                                                     batchnorm=True)),
                      DATASET_INFOS['fashion_mnist'])
  tx = optim.torch_sgd(optim.Schedule('constant', lr_max=0.05, total_steps=4,
                                      steps_per_epoch=2), 5e-4)
  schedule = optim.Schedule('constant', lr_max=0.05, total_steps=4, steps_per_epoch=2)
  ts = init_train_state(model, jax.random.key(0), tx=tx)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)), jnp.uint8)
  labels = jnp.arange(8) % 10
  step = jax.jit(make_train_step(model, Method('pgd_ga', PGD, CrossEntropy(), (GradAlign(0.5),)),
                                 schedule, tx=tx, augment_mode='none', key=jax.random.key(1)))
  after, metrics = step(ts, images, labels, jnp.arange(8))
  assert -1.0 <= float(metrics['gradalign_cos']) <= 1.0 and float(metrics['gradalign_reg']) > 0
  chex.assert_trees_all_equal_shapes(after.params, ts.params)
  assert int(after.opt_state.count) == 1
