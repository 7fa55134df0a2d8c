"""The piecewise drivers (PGD per restart, APGD per chunk of iterations, Square per chunk of
queries: a progress bar moves per piece) give the very δ and counts of one call."""
import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from fat_jax.attacks import apgd_attack, pgd_attack, square_attack
from fat_jax.data import DATASET_INFOS
from fat_jax.evaluate.monitor import PGDSettings, evaluate_robustness, robust_flags
from fat_jax.evaluate import evaluate, pieces, registry
from fat_jax.evaluate.pieces import apgd_by_chunk, pgd_by_restart, square_by_chunk
from fat_jax.evaluate.registry import SuiteOptions, attack_batch, attack_in_pieces
from tests.test_apgd import noisy_problem
from fat_jax.methods import init_train_state
from fat_jax.models import build_model
from fat_jax.parallel import make_data_mesh

EPS = 8 / 255


@pytest.fixture(scope='module')
def problem():
  """A small BatchNorm CNN (convolutions, as the evaluated models) and 8 points."""
  info = DATASET_INFOS['cifar10']
  model = build_model(ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2,
                                                     batchnorm=True, dtype='float32')), info)
  ts = init_train_state(model, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (8, *info.image_shape))
  y = jax.random.randint(jax.random.key(2), (8,), 0, 10)
  return model.apply, ts.params, ts.batch_stats, x, y


@pytest.mark.parametrize('restarts,loss', [(1, 'ce'), (3, 'margin')])
def test_driver_equals_one_call(problem, restarts, loss):
  apply_fn, params, state, x, y = problem
  kw = dict(eps=EPS, alpha=EPS / 4, steps=3, restarts=restarts, loss=loss)
  one_call = jax.jit(lambda p, s, x, y, k: pgd_attack(apply_fn, p, s, x, y, k, **kw).delta)(
      params, state, x, y, jax.random.key(3))
  calls = []
  by_restart = pgd_by_restart(apply_fn, params, state, x, y, jax.random.key(3),
                              on_restart=lambda: calls.append(1), **kw)
  assert len(calls) == restarts
  np.testing.assert_array_equal(np.asarray(by_restart), np.asarray(one_call))
  assert np.abs(np.asarray(one_call)).max() > 0


def test_suite_batch_equals_attack_batch(problem, name='pgd'):
  apply_fn, params, state, x, y = problem
  options = dataclasses.replace(SuiteOptions(), pgd_steps=3, pgd_restarts=2,
                                pgd_step_size=0.3, n_draws=0)
  whole = attack_batch(params, state, x, y, jax.random.key(4), EPS, 0, apply_fn=apply_fn,
                       name=name, options=options)
  split = attack_in_pieces(params, state, x, y, jax.random.key(4), EPS, 0, apply_fn=apply_fn,
                           name=name, options=options)
  for a, b in zip(split, whole):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('norm,eps', [('Linf', EPS), ('L2', 0.5)])
def test_square_by_chunk_equals_one_call(problem, monkeypatch, norm, eps):
  monkeypatch.setattr(pieces, 'SQUARE_CHUNK', 7)
  apply_fn, params, state, x, y = problem
  kw = dict(eps=eps, queries=30, norm=norm)
  one_call = jax.jit(lambda p, s, x, y, k: square_attack(apply_fn, p, s, x, y, k, **kw))(
      params, state, x, y, jax.random.key(7))
  calls = []
  chunked = square_by_chunk(apply_fn, params, state, x, y, jax.random.key(7), on_chunk=calls.append,
                            **kw)
  assert calls == [7, 14, 21, 28, 30]
  for a, b in ((chunked.delta, one_call.delta), (chunked.queries, one_call.queries)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(one_call.delta)).max() > 0 and int(one_call.queries.max()) == 31  # the start + 30


def test_suite_square_batch_equals_attack_batch(problem, monkeypatch):
  monkeypatch.setattr(pieces, 'SQUARE_CHUNK', 16)
  apply_fn, params, state, x, y = problem
  options = dataclasses.replace(SuiteOptions(), square_queries=40, n_draws=0)
  whole = attack_batch(params, state, x, y, jax.random.key(8), EPS, 0, apply_fn=apply_fn,
                       name='square', options=options)
  split = attack_in_pieces(params, state, x, y, jax.random.key(8), EPS, 0, apply_fn=apply_fn,
                           name='square', options=options)
  for a, b in zip(split, whole):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('loss,restarts', [('ce', 2), ('dlr', 1)])
def test_apgd_by_chunk_equals_one_call(problem, monkeypatch, loss, restarts):
  monkeypatch.setattr(pieces, 'APGD_CHUNK', 4)
  apply_fn, params, state, x, y = problem
  kw = dict(eps=EPS, steps=10, restarts=restarts, loss=loss)
  one_call = jax.jit(lambda p, s, x, y, k: apgd_attack(apply_fn, p, s, x, y, k, **kw).delta)(
      params, state, x, y, jax.random.key(9))
  calls = []
  chunked = apgd_by_chunk(apply_fn, params, state, x, y, jax.random.key(9),
                          on_chunk=calls.append, **kw)
  assert calls[:4] == [4, 8, 10, 10] and calls[-1] == 10 * restarts
  np.testing.assert_array_equal(np.asarray(chunked), np.asarray(one_call))
  assert np.abs(np.asarray(one_call)).max() > 0


@pytest.mark.parametrize('name,rank', [('apgd-ce', 0), ('apgd-t', 1), ('apgd-dlr', 0)])
def test_suite_apgd_batch_equals_attack_batch(problem, monkeypatch, name, rank):
  monkeypatch.setattr(pieces, 'APGD_CHUNK', 3)
  apply_fn, params, state, x, y = problem
  options = dataclasses.replace(SuiteOptions(), apgd_steps=7, apgd_restarts=2, n_draws=0)
  whole = attack_batch(params, state, x, y, jax.random.key(10), EPS, rank, apply_fn=apply_fn,
                       name=name, options=options)
  done = []
  split = attack_in_pieces(params, state, x, y, jax.random.key(10), EPS, rank,
                           apply_fn=apply_fn, name=name, options=options, on_piece=done.append)
  assert done[-1] == 1.0 and done == sorted(done)
  for a, b in zip(split, whole):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_suite_apgd_batch_equals_attack_batch_with_eot():
  noisy, params, x, y = noisy_problem()
  options = dataclasses.replace(SuiteOptions(), apgd_steps=5, eot_samples=3, n_draws=0)
  args = (params, {}, x, y, jax.random.key(11), 0.1, 0)
  whole = attack_batch(*args, apply_fn=noisy, name='apgd-ce', options=options, randomized=True)
  split = attack_in_pieces(*args, apply_fn=noisy, name='apgd-ce', options=options,
                           randomized=True)
  for a, b in zip(split, whole):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluate_with_a_progress_bar_runs_in_pieces_and_gives_the_same_report(problem,
                                                                                monkeypatch):
  monkeypatch.setattr(pieces, 'APGD_CHUNK', 2)
  monkeypatch.setattr(pieces, 'SQUARE_CHUNK', 8)
  calls = []
  for driver in (apgd_by_chunk, square_by_chunk):
    monkeypatch.setattr(registry, driver.__name__,
                        lambda *a, driver=driver, **k: calls.append(driver.__name__)
                        or driver(*a, **k))
  apply_fn, params, state, x, y = problem
  kw = dict(suite='custom', attacks=['apgd-ce', 'apgd-t', 'square'], eps=EPS, apgd_steps=5,
            n_target_classes=2, square_queries=20, checks=False, verbose=False, batch_size=8)
  with_bar = evaluate(apply_fn, params, state, x, y, progress=True, **kw)
  assert {'apgd_by_chunk', 'square_by_chunk'} <= set(calls)   # the pieces ran
  without = evaluate(apply_fn, params, state, x, y, progress=False, **kw)
  for field in ('scores', 'x_adv'):
    np.testing.assert_array_equal(with_bar[field], without[field])
  assert with_bar['forward_passes'] == without['forward_passes']
  assert with_bar['robust_accuracy_by_attack'] == without['robust_accuracy_by_attack']


def test_monitor_equals_one_call(problem):
  """The training monitor (PGD restart by restart) gives what `robust_flags` gives in one call."""
  info = DATASET_INFOS['cifar10']
  model = build_model(ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2,
                                                     batchnorm=True, dtype='float32')), info)
  _, params, state, _, y = problem
  images = np.asarray(jax.random.randint(jax.random.key(5), (8, *info.image_shape), 0, 256),
                      np.uint8)
  settings = PGDSettings(eps=EPS, steps=3, restarts=2)
  report = evaluate_robustness(model, params, state, images, np.asarray(y), settings,
                               mesh=make_data_mesh(), batch_size=8, seed=6, progress=False)
  key = jax.random.fold_in(jax.random.key(6), 0)
  one_call = robust_flags(model, settings, params, state, images, y, key)
  for name in ('clean', 'fgsm', 'pgd'):
    np.testing.assert_array_equal(report['flags'][name], np.asarray(one_call[name]).astype(bool))
  for node, v in one_call['vact']['pgd'].items():
    assert report['vact_pgd'][node] == float(np.asarray(v).mean())
