"""Checks at the door of `evaluate()` and of a run config: labels read before any cast, every
count, step and fraction in its range, the suite and the seed, each refused with one line
before any model is traced or compiled and before anything is written."""
import os

import numpy as np
import pytest

from fat_jax.evaluate import evaluate
from fat_jax.evaluate.suites import SUITES
from fat_jax.run.train import train_and_evaluate
from fat_jax.validation import ConfigError, config_problems, validate_config
from tests.test_apgd import mlp_apply
from tests.test_train import tiny_config

RNG = np.random.default_rng(0)
X = RNG.uniform(size=(8, 4, 4, 1)).astype(np.float32)
Y = np.arange(8) % 10
PARAMS = {'w1': RNG.normal(size=(16, 32)) / 4, 'b1': np.zeros(32),
          'w2': RNG.normal(size=(32, 10)) / 6, 'b2': np.zeros(10)}
QUICK = dict(suite='custom', attacks=['fgsm'], checks=False, progress=False, verbose=False)


def never_called(params, state, x, train):
  raise AssertionError('the model ran before the arguments were checked')


def refused(match, apply_fn=mlp_apply, x=X, y=Y, **kwargs) -> str:
  """The one-line `ConfigError` of `evaluate` on these arguments, matching `match`."""
  with pytest.raises(ConfigError, match=match) as error:
    evaluate(apply_fn, PARAMS, {}, x, y, eps=8 / 255, **{**QUICK, **kwargs})
  assert len(str(error.value).splitlines()) == 1, str(error.value)
  return str(error.value)


def test_fractional_labels_are_refused_not_truncated_and_whole_floats_accepted():
  message = refused(r'8 labels are not whole numbers \(e.g. y\[0\] = 0.7\)', y=Y + 0.7)
  assert 'class indices' in message
  as_floats = evaluate(mlp_apply, PARAMS, {}, X, Y.astype(np.float32), eps=8 / 255, **QUICK)
  as_ints = evaluate(mlp_apply, PARAMS, {}, X, Y, eps=8 / 255, **QUICK)
  assert as_floats['clean_accuracy'] == as_ints['clean_accuracy']
  assert as_floats['robust_accuracy'] == as_ints['robust_accuracy']


def test_int64_labels_beyond_int32_are_refused_not_wrapped():
  refused(r'8 labels are not classes 0..9 .*y\[0\] = 4294967296', y=Y.astype(np.int64) + 2**32)


@pytest.mark.parametrize('y, match', [
    (np.eye(10)[Y], r'labels must be class indices of shape \(N,\), got \(8, 10\): one-hot\? '
                    r'pass y.argmax\(-1\)'),
    (Y[:, None], r'got \(8, 1\): pass y.reshape\(-1\)'),
    (Y[:7], r'x of shape \(8, 4, 4, 1\) holds 8 points, labels of shape \(7,\) 7'),
    (Y % 2 == 1, r'labels are bool \(a mask\?\)'),
    (Y.astype(str), r'labels of dtype <U\d+ are not class indices'),
])
def test_label_shapes_and_dtypes_are_named_before_the_model_runs(y, match):
  refused(match, apply_fn=never_called, y=y)


@pytest.mark.parametrize('x, match', [
    (X[:0], r'x of shape \(0, 4, 4, 1\) holds no points'),
    (X.astype(bool), 'x of dtype bool is not pixels'),
])
def test_point_shapes_and_dtypes_are_named_before_the_model_runs(x, match):
  refused(match, apply_fn=never_called, x=x, y=Y[:len(x)])


@pytest.mark.parametrize('argument, value, match', [
    ('pgd_step_size', -1.0, r'pgd_step_size=-1.0 must be finite and in \(0, inf\)'),
    ('pgd_step_size', 0.0, r'pgd_step_size=0.0 must be finite and in \(0, inf\)'),
    ('pgd_step_size', float('nan'), r'pgd_step_size=nan must be finite'),
    ('pgd_steps', 0, 'pgd_steps=0 must be positive: give an integer ≥ 1'),
    ('pgd_restarts', 0, 'pgd_restarts=0 must be positive'),
    ('pgd_steps', 2.5, 'pgd_steps=2.5 is not an integer'),
    ('batch_size', 0, 'batch_size=0 must be positive'),
    ('check_pgd_steps', 0, 'check_pgd_steps=0 must be positive'),
    ('sweep_steps', -3, 'sweep_steps=-3 must be positive'),
    ('eot_check_n', -1, r'eot_check_n=-1 is negative: give a count ≥ 0 \(0 = off\)'),
    ('apgd_t_restarts', 0, 'apgd_t_restarts=0 must be positive'),
    ('square_queries', 0, 'square_queries=0 must be positive'),
    ('mm_steps', 0, 'mm_steps=0 must be positive'),
    ('n_draws', 0, 'n_draws=0 must be positive'),
    ('square_p_init', 1.5, r'square_p_init=1.5 must be finite and in \(0, 1\]'),
    ('apgd_rho', -0.1, r'apgd_rho=-0.1 must be finite and in \[0, 1\]'),
    ('seed', -1, r'seed=-1 is not a seed: give an integer in \[0, 2\^63\)'),
])
def test_bad_settings_are_refused_before_the_model_runs(argument, value, match):
  refused(match, apply_fn=never_called, suite='pgd', attacks=None, **{argument: value})


def test_every_mistake_of_a_call_is_listed_together():
  with pytest.raises(ConfigError) as error:
    evaluate(never_called, PARAMS, {}, X, np.eye(10)[Y], eps=8 / 255, pgd_steps=0,
             batch_size=0, **QUICK)
  assert len(str(error.value).splitlines()) == 3


@pytest.mark.parametrize('field, value, match', [
    ('eval.pgd_step_size', -1.0, r'eval.pgd_step_size=-1.0 must be finite and in \(0, inf\)'),
    ('eval.pgd_step_size', 0.0, r'eval.pgd_step_size=0.0 must be finite and in \(0, inf\)'),
    ('eval.suite', 'bogus', "eval.suite='bogus' is not a suite: use one of aa_standard"),
    ('eval.apgd_restarts', 0, 'eval.apgd_restarts=0 must be positive'),
    ('eval.fab_steps', 0, 'eval.fab_steps=0 must be positive'),
    ('eval.eot_samples', 0, 'eval.eot_samples=0 must be positive'),
    ('eval.square_p_init', 0.0, r'eval.square_p_init=0.0 must be finite and in \(0, 1\]'),
    ('eval.eot_check_n', -1, r'eval.eot_check_n=-1 is negative: give a count ≥ 0 \(0 = off\)'),
    ('analysis.pgd_steps', 0, 'analysis.pgd_steps=0 must be positive'),
    ('method.mep.label_smoothing', 1.5, r'method.mep.label_smoothing=1.5 must be finite and in '
                                        r'\[0, 1\]'),
    ('seed', -1, r'seed=-1 is not a seed'),
])
def test_bad_eval_config_values_are_refused_in_training_mode(field, value, match, tmp_path):
  # No data set exists at data.dir: a later check would fail with DatasetNotFoundError.
  config = tiny_config(str(tmp_path / 'missing'), **{field: value})
  with pytest.raises(ConfigError, match=match) as error:
    validate_config(config, training=True, suites=SUITES)
  assert len(str(error.value).splitlines()) == 1
  assert any(p.startswith(f'{field}=')   # --mode=eval too
             for p in config_problems(config, suites=SUITES))


@pytest.mark.parametrize('field, value', [('seed', -1), ('eval.suite', 'bogus')])
def test_a_bad_seed_or_suite_stops_training_before_anything_is_written(field, value, tmp_path):
  config = tiny_config(str(tmp_path / 'missing'), **{field: value})
  workdir = tmp_path / 'run'
  with pytest.raises(ConfigError, match=f'{field}='):
    train_and_evaluate(config, str(workdir))
  assert not os.path.exists(workdir / 'config.json') and not os.path.exists(workdir)
