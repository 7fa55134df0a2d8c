"""The binarization test (Zimmermann et al. 2022): the construction's guarantee in NumPy, its
verdict on a normally trained tiny CNN (pass) and on the same CNN behind input quantisation,
whose input gradient is zero (fail), and the 'uninformative' verdicts of the checks that could
not test anything."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.analysis import evaluators

from fat_jax.evaluate import sanity
from fat_jax.evaluate import evaluate, format_table, save_report
from fat_jax.evaluate.binarization import (LOGITS, binarization_test, binarize, binary_attacks,
                                           boundary_point, feature_node, inner_points)
from fat_jax.evaluate.classifier import Classifier
from fat_jax.parallel import make_data_mesh
from tests.test_apgd import toy_data
from tests.test_eval_suites import checkpointed_run

EPS = 0.1
SMALL = dict(suite='custom', attacks=['apgd-ce'], eps=EPS, apgd_steps=5, square_queries=20,
             check_pgd_steps=2, progress=False, verbose=False)


def cnn_apply(params, state, x, train):
  """conv3×3 (8, ReLU) → dense 32 (ReLU, feature node 'B') → dense 10."""
  a = jax.nn.relu(jax.lax.conv_general_dilated(x, params['k'], (1, 1), 'SAME',
                                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
                  + params['kb'])
  h = jax.nn.relu(a.reshape(len(x), -1) @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2'], state, {'A': a, 'B': h}


def quantized_cnn_apply(params, state, x, train):
  """The CNN on x rounded to 16 levels: the input gradient is exactly zero (masked)."""
  return cnn_apply(params, state, jnp.round(x * 16) / 16, train)


@functools.partial(jax.jit, static_argnames=('steps',))
def _train(params, x, y, steps=400, lr=0.2):
  def loss(p):
    logits = cnn_apply(p, {}, x, True)[0]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
  return jax.lax.fori_loop(0, steps, lambda _, p: jax.tree.map(
      lambda w, g: w - lr * g, p, jax.grad(loss)(p)), params)


@pytest.fixture(scope='module')
def cnn():
  x, y = toy_data(jax.random.key(0), 200)
  k = jax.random.split(jax.random.key(1), 3)
  params = {'k': jax.random.normal(k[0], (3, 3, 1, 8)) / 3, 'kb': jnp.zeros(8),
            'w1': jax.random.normal(k[1], (128, 32)) / np.sqrt(128), 'b1': jnp.zeros(32),
            'w2': jax.random.normal(k[2], (32, 10)) / np.sqrt(32), 'b2': jnp.zeros(10)}
  params = _train(params, x, y)
  assert float(jnp.mean(cnn_apply(params, {}, x, False)[0].argmax(-1) == y)) > 0.9
  return params, np.asarray(x[:8]), np.asarray(y[:8])


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_sampled_points_lie_where_the_construction_puts_them(norm):
  rng = np.random.default_rng(0)
  x = np.random.default_rng(1).uniform(0, 1, (4, 4, 3)).astype(np.float32)
  x[0, 0] = [0.0, 1.0, 0.02]   # pixels without room for ε on one side
  eps = 0.1 if norm == 'Linf' else 0.5
  dist = lambda d: (np.sqrt((d.astype(np.float64) ** 2).sum(axis=(1, 2, 3))) if norm == 'L2'
                    else np.abs(d).max(axis=(1, 2, 3)))
  inner = inner_points(rng, x, 200, eps, norm)
  assert 0 <= inner.min() and inner.max() <= 1
  assert dist(inner - x).max() <= 0.95 * eps + 1e-6
  if norm == 'L2':   # rescaled to (1 − gap)·ε after clipping, as the official code
    np.testing.assert_allclose(dist(inner - x), 0.95 * eps, rtol=1e-5)
  b = np.stack([boundary_point(rng, x, eps, norm) for _ in range(20)])
  assert 0 <= b.min() and b.max() <= 1
  np.testing.assert_allclose(dist(b - x), eps, rtol=1e-5)


def test_the_boundary_point_is_an_adversarial_example_of_the_binarized_model(cnn):
  """The guarantee, recomputed in NumPy from the binarized model's weights: the boundary point
  lies in the ε-ball and in [0, 1], and the readout gives it class 1 and every inner point
  (the clean point first) class 0."""
  params, x, _ = cnn
  model = Classifier(cnn_apply, params, {})
  assert feature_node(model, x) == 'B'
  b = binarize(model, x[0], np.random.default_rng(0), eps=EPS, n_inner=24)
  assert b.failure is None
  _, mu, sigma, weight, bias = jax.tree.map(lambda a: np.asarray(a, np.float64), b.model.params)
  p = jax.tree.map(np.asarray, params)

  def readout(z):   # the CNN's 'B' node and the readout, in float64 NumPy
    z = z.astype(np.float64)
    patches = np.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0)))
    a = sum(patches[:, i:i + 4, j:j + 4, :] @ p['k'][i, j] for i in range(3) for j in range(3))
    h = np.maximum(np.maximum(a + p['kb'], 0).reshape(len(z), -1) @ p['w1'] + p['b1'], 0)
    logits = ((h - mu) / sigma) @ weight + bias
    return logits[:, 1] - logits[:, 0]

  assert np.abs(b.boundary - x[0]).max() <= EPS + 1e-6
  assert 0 <= b.boundary.min() and b.boundary.max() <= 1
  np.testing.assert_array_equal(b.inner[0], x[0])
  assert readout(b.boundary[None])[0] > 0
  assert (readout(b.inner) < 0).all()


def test_passes_on_a_trained_cnn_and_fails_on_its_gradient_masked_version(cnn):
  params, x, _ = cnn
  kw = dict(eps=EPS, attacks=('apgd-ce',), n_inner=24)
  clean = binarization_test(Classifier(cnn_apply, params, {}), x, **kw)
  verdict = sanity.check_binarization(clean['attack_success'], clean['n_sampled'],
                                      clean['attacks'], clean['setup_failures'])
  assert clean['feature_node'] == 'B' and clean['setup_failures'] == {}
  assert clean['attack_success_rate'] == 1.0 and verdict['status'] == sanity.PASS
  masked = binarization_test(Classifier(quantized_cnn_apply, params, {}), x, **kw)
  verdict = sanity.check_binarization(masked['attack_success'], masked['n_sampled'],
                                      masked['attacks'], masked['setup_failures'])
  assert len(masked['attack_success']) >= 4 and masked['attack_success_rate'] == 0.0
  assert verdict['status'] == sanity.WARN and verdict['failed'] == len(masked['attack_success'])
  assert verdict['fraction_failed'] == 1.0 and 'fail on' in verdict['message']


def test_a_plain_logits_function_is_read_out_from_its_logits(cnn):
  params, x, _ = cnn
  f = lambda z: cnn_apply(params, {}, z, False)[0]
  result = binarization_test(f, x[:2], eps=EPS, n_inner=5)
  assert result['feature_node'] == LOGITS and result['n_sampled'] == 2


def blind_cnn_apply(params, state, x, train):
  """The CNN with a feature node that does not depend on x: no readout can be trained."""
  return cnn_apply(params, state, x, train)[0], state, {'Z': jnp.zeros((len(x), 4))}


def test_a_point_whose_readout_cannot_be_trained_is_not_tested(cnn):
  params, x, _ = cnn
  result = binarization_test(Classifier(blind_cnn_apply, params, {}), x[:2], eps=EPS, n_inner=8)
  assert result['attack_success'] == [] and result['feature_node'] == 'Z'
  assert list(result['setup_failures'].values()) == [2]
  verdict = sanity.check_binarization(result['attack_success'], 2, result['attacks'],
                                      result['setup_failures'])
  assert verdict['status'] == sanity.UNINFORMATIVE
  assert 'could not be set up on any of the 2 points' in verdict['reason']


def test_attacks_that_need_more_classes_are_refused(cnn):
  params, x, _ = cnn
  assert binary_attacks(('apgd-ce', 'apgd-t', 'fab-t', 'square'), 'Linf') == (
      ('apgd-ce', 'square'), ('apgd-t', 'fab-t'))
  with pytest.raises(ValueError, match=r"\['apgd-t'\] cannot attack the 2-class"):
    binarization_test(Classifier(cnn_apply, params, {}), x[:1], eps=EPS, attacks=('apgd-t',))


def test_binarization_as_a_check_of_evaluate(cnn):
  params, x, y = cnn
  kw = dict(SMALL, square_check=False)
  report = evaluate(cnn_apply, params, {}, x[:4], y[:4], checks=('binarization',),   # as a run
                    binarization_n=2, binarization_inner=24, mesh=make_data_mesh(), **kw)
  check = report['checks']['binarization']
  assert check['attacks'] == ['apgd-ce'] and check['n_sampled'] == check['n_tested'] == 2
  assert check['status'] == sanity.PASS and check['feature_node'] == 'B'
  assert report['settings']['checks'] == ['binarization']
  report = evaluate(cnn_apply, params, {}, x[:4], y[:4], checks=('binarization',),
                    binarization_n=0, **kw)
  assert report['checks']['binarization']['reason'] == 'no point was sampled'
  with pytest.raises(ValueError, match='Unknown checks'):
    evaluate(cnn_apply, params, {}, x[:4], y[:4], eps=EPS, checks=('binarisation',))


def test_checks_with_nothing_to_test_say_uninformative():
  none = np.zeros(5, bool)
  cases = {
      'square': sanity.check_square(0.0, 0.0),
      'ordering': sanity.check_ordering([('clean', np.ones(5, bool)), ('fgsm', none),
                                         ('pgd', none)]),
      'fgsm_pgd_gap': sanity.check_fgsm_pgd_gap(0.0, 0.0),
      'more_iterations': sanity.check_more_iterations('PGD-20', 0.0, 'PGD-40-2', 0.0, 0,
                                                      attacked=0),
      'eps_sweep': sanity.check_eps_sweep([0.0, 0.1, 1.0], [0.0, 0.0, 0.0]),
      'eot_samples': sanity.check_eot_samples(20, np.zeros(5), 100, np.zeros(5)),
      'binarization (none sampled)': sanity.check_binarization([], 0, ['apgd-ce']),
      'binarization (none set up)': sanity.check_binarization([], 3, ['apgd-ce'],
                                                              {'no readout': 3}),
      'binarization (no attack)': sanity.check_binarization([], 3, []),
  }
  cases['gradient_free'] = sanity.check_gradient_free(cases['square'])
  for name, record in cases.items():
    assert record['status'] == sanity.UNINFORMATIVE, name
    assert record['reason'] and record['message'] == record['reason'], name
  # With something to test they still pass or warn.
  assert sanity.check_square(0.5, 0.5)['status'] == sanity.PASS
  assert sanity.check_fgsm_pgd_gap(0.6, 0.1)['status'] == sanity.WARN
  assert sanity.check_more_iterations('a', 0.0, 'b', 0.1, 1, attacked=5)['status'] == sanity.WARN
  assert sanity.check_ordering([('clean', none), ('fgsm', np.ones(5, bool))])['status'] == \
      sanity.WARN


def test_an_evaluation_with_no_robust_point_left_reports_uninformative_checks(cnn, tmp_path):
  """ε = 1 breaks every point: Square, the gradient-free check, the order, the FGSM/PGD gap
  have nothing to test, and the table and the JSON report say so."""
  params, x, y = cnn
  report = evaluate(cnn_apply, params, {}, x[:4], y[:4], **{**SMALL, 'eps': 1.0})
  assert report['robust_accuracy'] == 0.0
  checks = report['checks']
  assert checks['binarization']['status'] == sanity.SKIPPED   # not asked for
  for name in ('square', 'gradient_free', 'ordering', 'fgsm_pgd_gap'):
    assert checks[name]['status'] == sanity.UNINFORMATIVE, name
  assert 'check square          uninformative no point is robust' in format_table(report)
  stored = json.load(open(save_report(report, str(tmp_path / 'r.json'))))
  assert stored['checks']['square']['status'] == 'uninformative'
  assert stored['checks']['square']['reason'] == checks['square']['message']


def test_the_run_config_adds_the_binarization_check(tmp_path, monkeypatch):
  """--config.eval.binarization=True (and binarization_n) reach `evaluate` from a run."""
  _, run = checkpointed_run(tmp_path)
  config = run.config
  seen = []

  def spy(*args, **kwargs):
    seen.append(kwargs)
    raise InterruptedError   # the arguments are all this test needs

  monkeypatch.setattr(evaluators, 'evaluate', spy)
  for binarization, n, expected in ((False, None, True), (True, 3, ('binarization',))):
    config.eval.binarization, config.eval.binarization_n = binarization, n
    with pytest.raises(InterruptedError):
      evaluators.evaluate_run(run)
    assert seen[-1]['checks'] == expected and seen[-1].get('binarization_n') == n
