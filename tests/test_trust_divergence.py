"""Divergence without NaN in the state: weights so large (yet finite) that the model's forwards
overflow stop a training run at its monitor, and `evaluate` refuses NaN logits and names a
constant prediction. Each test fails on a loop and checks that look at the weights only."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.evaluate import sanity

from fat_jax.run import run_log
from fat_jax.run.checkpoint import Checkpointer
from fat_jax.run.divergence import (CE_BOUND_PER_LN_CLASSES, DivergenceError, check_loss,
                                monitor_problems)
from fat_jax.evaluate import evaluate
from fat_jax.run.train import train_and_evaluate
from tests.fixtures import write_idx_dir
from tests.test_apgd import toy_data
from tests.test_train import tiny_config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return write_idx_dir(str(tmp_path_factory.mktemp('fmnist')), n_train=64, n_test=16)


def blowing_up(data_dir, batch_size, **overrides):
  """lr × 1e8 from epoch 2 on: its first update leaves finite weights (no NaN or inf in the
  state) whose forwards overflow into NaN logits."""
  return tiny_config(data_dir, batch_size=batch_size, **{
      'optim.schedule': 'multistep', 'optim.lr_max': 0.01, 'optim.milestones': (1, 1),
      'optim.gamma': 1e8, **overrides})


def test_finite_but_huge_weights_stop_the_run_at_the_monitor(data_dir, tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(DivergenceError, match=r'NaN or inf logits on \d+ of 16 points.* '
                     r'after epoch 2 .*checkpoint of epoch 1'):
    train_and_evaluate(blowing_up(data_dir, 64), workdir)
  records = run_log.read_records(workdir)
  assert [r['epoch'] for r in records] == [1]
  assert all(math.isfinite(v) for v in records[0]['vact'].values())
  checkpointer = Checkpointer(workdir)
  assert checkpointer.epochs() == [1]
  checkpointer.close()
  assert not os.path.exists(os.path.join(workdir, run_log.RESULTS))


def test_the_monitor_within_an_epoch_stops_the_run_too(data_dir, tmp_path):
  # Two steps per epoch, the monitor after every step: step 3 is epoch 2's first update.
  workdir = str(tmp_path)
  with pytest.raises(DivergenceError, match=r'NaN or inf logits .* at step 3 \(epoch 2\)'):
    train_and_evaluate(blowing_up(data_dir, 32, **{'eval.monitor_every_steps': 1}), workdir)
  assert [r['step'] for r in run_log.read_records(workdir, name=run_log.MONITOR)] == [1]
  assert [r['epoch'] for r in run_log.read_records(workdir)] == [1]


def test_a_training_cross_entropy_above_the_bound_is_divergence():
  bound = CE_BOUND_PER_LN_CLASSES * math.log(10)
  check_loss(4 * math.log(10), 10, 'of epoch 1', lambda: '')
  for ce in (1.01 * bound, math.nan):
    with pytest.raises(DivergenceError, match=r'cross-entropy of epoch 3 is .* above the '
                       r'bound 230\.3 .*go back'):
      check_loss(ce, 10, 'of epoch 3', lambda: 'go back')


def test_monitor_problems_name_every_non_finite_value():
  result = {'n': 16, 'non_finite_logits': 0, 'clean_accuracy': 0.5, 'fgsm_accuracy': 0.25,
            'pgd_accuracy': 0.125, 'fosc_fgsm': 0.1, 'fosc_pgd': 0.2, 'vact': {'A': 1.0},
            'vact_pgd': {'A': 2.0}}
  assert monitor_problems(result) == []
  assert monitor_problems({**result, 'fosc_pgd': math.inf, 'vact_pgd': {'A': math.nan}}) == [
      'non-finite fosc_pgd, vact_pgd[A]']


def relu_mlp(params, state, x, train):
  h = jax.nn.relu(x.reshape(len(x), -1) @ params['w1'])
  return h @ params['w2'] + params['b2'], state, {}


def relu_params(scale: float, bias: np.ndarray):
  k1, k2 = jax.random.split(jax.random.key(0))
  return {'w1': scale * jax.random.normal(k1, (16, 32)),
          'w2': scale * jax.random.normal(k2, (32, 10)), 'b2': jnp.asarray(bias, jnp.float32)}


def test_evaluate_refuses_nan_logits_of_huge_finite_weights():
  x, y = toy_data(jax.random.key(0), 32)
  params = relu_params(1e30, np.zeros(10))  # finite; h ≈ 1e30, h·w2 = ±inf, their sums NaN
  assert all(bool(jnp.isfinite(w).all()) for w in jax.tree.leaves(params))
  with pytest.raises(sanity.NonFiniteLogitsError,
                     match=r'NaN/inf logits on 32 of 32 points .*weights have diverged'):
    evaluate(relu_mlp, params, {}, x, y, eps=0.1, suite='pgd', pgd_steps=2, pgd_restarts=1,
             check_pgd_steps=2, square_check=False, progress=False, verbose=False)


def test_a_constant_prediction_is_a_failed_check_not_randomness():
  x, y = toy_data(jax.random.key(0), 32)
  params = relu_params(0.01, 10.0 * np.eye(10)[3])  # class 3 wins on every input
  report = evaluate(relu_mlp, params, {}, x, y, eps=0.1, suite='pgd', pgd_steps=2,
                    pgd_restarts=1, check_pgd_steps=2, square_check=False, progress=False,
                    verbose=False)
  check = report['checks']['prediction']
  assert check['status'] == sanity.WARN
  assert 'predicts one class (3) for every input while the labels hold 10' in check['message']
  assert report['checks']['determinism']['status'] == sanity.PASS
  assert 'random' not in ' '.join(c['message'] for c in report['checks'].values()
                                  if c['status'] == sanity.WARN)
