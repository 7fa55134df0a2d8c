"""ELLE and ELLE-A against an independent transcription of the official loop (`LIONS-EPFL/ELLE`
core/utils/train.py: `Trainer.loss` with reg='ELLE', `Trainer.train` with lambda_schedule
'onoff'), their resolution from the config and ELLE-A's state in checkpoints."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax import optim
from fat_jax.losses import cross_entropy
from fat_jax.losses.elle import adaptive_lambda_update, elle_lambda, init_adaptive_lambda
from fat_jax.run.checkpoint import Checkpointer
from fat_jax.methods import (TrainState, init_regularizer_state, make_train_step,
                             resolve_method)
from tests.test_seed_methods import method_config, tiny  # noqa: F401  (tiny: a fixture)

EPS = 0.1
WD = 5e-4
SCHEDULE = optim.Schedule('cyclic', lr_max=0.2, total_steps=40, steps_per_epoch=10)


def official_lambda_rule(errors, lam_max, decay=0.99, sensitivity=2.0):
  """The λ of each step, as `Trainer.train` updates `lin_reg` from the list `elle_values`."""
  values, lam, used = [], 0.0, []
  for err in errors:
    used.append(lam)
    if len(values) > 2 and err > np.mean(values) + sensitivity * np.std(values):
      lam = lam_max
    else:
      lam *= decay
    values.append(err)
  return used, lam


def official_step(model, ts, images, labels, key, lam):
  """One step of the official ELLE loop at weight `lam`, written out: FGSM from zero with
  α = ε (kept in [0, 1], docs/deviations.md), the CE at x_adv, then one train-mode forward of
  cat(x_ab, x_c) and the clean forward of the accuracy log; torch SGD. Returns (state, error)."""
  _, _, align_key = jax.random.split(jax.random.fold_in(key, ts.step), 3)
  x = images.astype(jnp.float32) / 255   # augment 'none'
  n = x.shape[0]

  def attack_loss(delta):
    logits, st, _ = model.apply(ts.params, ts.batch_stats, x + delta, True)
    return cross_entropy(logits, labels).mean(), st
  g, state1 = jax.grad(attack_loss, has_aux=True)(jnp.zeros_like(x))
  x_adv = jnp.clip(x + EPS * jnp.sign(g), 0, 1)
  k_ab, k_alpha = jax.random.split(jax.random.fold_in(align_key, 1))
  x_ab = jnp.concatenate([x, x]) + EPS * (2 * jax.random.uniform(k_ab, (2 * n,) + x.shape[1:]) - 1)
  alpha = jax.random.uniform(k_alpha, (n, 1, 1, 1))
  x_c = (1 - alpha) * x_ab[:n] + alpha * x_ab[n:]
  alpha = alpha.squeeze()

  def loss(params):
    out2, state2, _ = model.apply(params, state1, x_adv, True)
    total = cross_entropy(out2, labels).mean()
    out, state3, _ = model.apply(params, state2, jnp.concatenate([x_ab, x_c]), True)
    losses = cross_entropy(out, jnp.concatenate([labels] * 3))
    lin_err = jnp.mean((losses[2 * n:] - ((1 - alpha) * losses[:n] + alpha * losses[n:2 * n]))
                       ** 2)
    _, state4, _ = model.apply(params, state3, x, True)
    return total + lam * lin_err, (state4, lin_err)
  grads, (state, lin_err) = jax.grad(loss, has_aux=True)(ts.params)
  hyper = SCHEDULE(ts.step)
  lr, mu = float(hyper.lr), float(hyper.momentum)
  momentum = jax.tree.map(lambda b, g, w: mu * b + g + WD * w, ts.opt_state.trace, grads,
                          ts.params)
  params = jax.tree.map(lambda w, b: w - lr * b, ts.params, momentum)
  return TrainState(ts.step + 1, params, state, optim.TorchSGDState(ts.step + 1, momentum),
                    ts.examples, ts.ema, ts.regularizer_state), float(lin_err)


def elle_step(model, method, key):
  return jax.jit(make_train_step(model, method, SCHEDULE, weight_decay=WD, augment_mode='none',
                                 key=key))


def test_elle_step_equals_the_official_sequence(tiny):
  model, ts, images, labels, indices = tiny
  method = resolve_method(method_config('elle', elle=dict(lam=100.0)), EPS)
  key = jax.random.key(3)
  step = elle_step(model, method, key)
  ours, manual = ts, ts
  for _ in range(3):
    ours, metrics = step(ours, images, labels, indices)
    manual, err = official_step(model, manual, images, labels, key, 100.0)
    chex.assert_trees_all_close(ours, manual, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics['elle_error']), err, rtol=1e-4, atol=1e-9)
    assert float(metrics['elle_lambda']) == 100.0 and err > 0
  # The term matters: without it the same steps give other weights.
  plain = elle_step(model, resolve_method(method_config('fgsm'), EPS), key)(
      ts, images, labels, indices)[0]
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(plain.params, step(ts, images, labels, indices)[0].params,
                                atol=1e-6)


def test_elle_a_step_follows_the_official_adaptive_rule(tiny):
  model, ts, images, labels, indices = tiny
  # k = 0: a spike whenever the error exceeds the mean of the earlier ones, so both branches run.
  method = resolve_method(method_config('elle_a', elle=dict(lam=50.0, sensitivity=0.0)), EPS)
  key = jax.random.key(4)
  step = elle_step(model, method, key)
  ours = ts._replace(regularizer_state=init_regularizer_state(method))
  manual, values, lam, used = ours, [], 0.0, []
  for _ in range(8):
    used.append(lam)
    ours, metrics = step(ours, images, labels, indices)
    manual, err = official_step(model, manual, images, labels, key, lam)
    chex.assert_trees_all_close(ours.params, manual.params, rtol=1e-5, atol=1e-6)
    assert float(metrics['elle_lambda']) == pytest.approx(lam, rel=1e-6)
    if len(values) > 2 and err > np.mean(values) + 0.0 * np.std(values):
      lam = 50.0
    else:
      lam *= 0.99
    values.append(err)
    carry = ours.regularizer_state['ELLE']
    np.testing.assert_allclose(float(carry.lam), lam, rtol=1e-6)
    np.testing.assert_allclose(float(carry.mean), np.mean(values), rtol=1e-4, atol=1e-10)
  assert 50.0 in used and 0.0 in used   # λ rose from 0 to λ_max at a spike


def test_adaptive_rule_step_by_step():
  errors = [1.0, 1.2, 0.8, 1.1, 3.0, 1.0, 0.9, 5.0, 1.0, 1.05, 0.7, 9.0]
  used, _ = official_lambda_rule(errors, 4000.0)
  s = init_adaptive_lambda()
  for err, lam in zip(errors, used):
    np.testing.assert_allclose(float(s.lam), lam, rtol=1e-6)
    s = adaptive_lambda_update(s, err, lam_max=4000.0, decay=0.99, sensitivity=2.0)
  np.testing.assert_allclose(float(s.mean), np.mean(errors), rtol=1e-6)
  np.testing.assert_allclose(float(np.sqrt(s.m2 / s.count)), np.std(errors), rtol=1e-5)
  assert used[:5] == [0.0] * 5 and used[5] == 4000.0 and used[8] == 4000.0
  assert used[6] == pytest.approx(4000.0 * 0.99)
  # Three earlier errors are needed: a spike at the third step does not switch λ on.
  assert official_lambda_rule([1.0, 1.0, 100.0, 1.0], 10.0)[0] == [0.0] * 4


def test_elle_resolution_and_composition():
  assert elle_lambda(8 / 255) == 1000.0 and elle_lambda(16 / 255) == 5000.0
  assert elle_lambda(26 / 255) == 10000.0
  e = resolve_method(method_config('elle'), 8 / 255)
  assert (e.elle.lam, e.elle.adaptive, e.attack.init, e.attack.alpha) == (1000.0, False, 'zero',
                                                                          8 / 255)
  a = resolve_method(method_config('elle_a'), 8 / 255).elle
  assert (a.lam, a.adaptive, a.decay, a.sensitivity) == (4000.0, True, 0.99, 2.0)
  n = resolve_method(method_config('n_fgsm', elle=dict(lam=100.0, adaptive=True)), 8 / 255)
  assert n.elle.adaptive and n.elle.lam == 100.0 and n.attack.init_scale == 2.0
  assert init_regularizer_state(n).keys() == {'ELLE'}
  assert init_regularizer_state(e) == {}
  with pytest.raises(ValueError, match='elle.decay'):
    resolve_method(method_config('elle', elle=dict(decay=1.5)), 8 / 255)


def test_configs_select_elle_and_elle_a():
  from configs import elle_eps8
  for variant, adaptive in (('elle', False), ('a', True)):
    c = elle_eps8.get_config(variant)
    m = resolve_method(c.method, c.eps)
    assert m.elle.adaptive == adaptive and not c.model.normalize
    assert (c.batch_size, c.num_epochs, c.optim.lr_max) == (128, 30, 0.2)
  with pytest.raises(ValueError, match='variant'):
    elle_eps8.get_config('b')


def test_state_without_elle_a_carry_is_refused(tiny):
  model, ts, images, labels, indices = tiny
  method = resolve_method(method_config('elle_a'), EPS)
  with pytest.raises(ValueError, match='init_regularizer_state'):
    make_train_step(model, method, SCHEDULE, weight_decay=WD, augment_mode='none',
                    key=jax.random.key(0))(ts, images, labels, indices)


def test_checkpoint_keeps_elle_a_state(tmp_path, tiny):
  _, ts, _, _, _ = tiny
  carry = adaptive_lambda_update(init_adaptive_lambda(), 0.5, lam_max=1.0, decay=0.9,
                                 sensitivity=2.0)._replace(lam=jnp.float32(0.25))
  ts = ts._replace(regularizer_state={'ELLE': carry})
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(1, ts)
  restored = checkpointer.restore(1, ts)
  checkpointer.close()
  chex.assert_trees_all_equal(restored, ts)
  assert type(restored.regularizer_state['ELLE']) is type(carry)
