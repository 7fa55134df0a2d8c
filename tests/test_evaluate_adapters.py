"""`evaluate` on a plain ``f(x) -> logits`` and ``f(params, x) -> logits``: auto-detected or
through `from_logits_fn` / `from_params_fn`, the same report as the apply function; a callable
of another shape gets an error listing the accepted signatures."""
import functools

import jax
import numpy as np
import pytest

from fat_jax.evaluate import Classifier, evaluate, from_logits_fn, from_params_fn
from fat_jax.evaluate.classifier import as_classifier
from tests.test_apgd import mlp_apply, trained  # noqa: F401

KW = dict(suite='custom', attacks=['apgd-ce'], eps=0.1, apgd_steps=5, batch_size=64,
          checks=False, progress=False)


def same_report(a, b):
  assert a['robust_accuracy_by_attack'] == b['robust_accuracy_by_attack']
  assert a['clean_accuracy'] == b['clean_accuracy']
  np.testing.assert_array_equal(a['flags']['robust'], b['flags']['robust'])
  np.testing.assert_allclose(a['x_adv'], b['x_adv'], atol=1e-6)


@pytest.fixture(scope='module')
def reference(trained):  # noqa: F811
  params, x, y = trained
  return evaluate(mlp_apply, params, {}, x, y, **KW)


def test_logits_fn_of_x_gives_the_apply_fn_report(trained, reference):  # noqa: F811
  params, x, y = trained
  f = lambda x: mlp_apply(params, {}, x, False)[0]
  same_report(evaluate(f, x=x, y=y, **KW), reference)
  same_report(evaluate(from_logits_fn(f), x=x, y=y, **KW), reference)
  # The sanity checks probe it too: finite logits, non-zero gradients, deterministic.
  checks = evaluate(f, x=x, y=y, **{**KW, 'checks': True, 'check_pgd_steps': 2})['checks']
  assert [checks[k]['status'] for k in ('validity', 'logits', 'zero_gradients', 'determinism')
          ] == ['pass'] * 4


def test_logits_fn_of_params_and_x_gives_the_apply_fn_report(trained, reference):  # noqa: F811
  params, x, y = trained
  f = lambda p, x: mlp_apply(p, {}, x, False)[0]
  same_report(evaluate(f, params, x=x, y=y, **KW), reference)
  same_report(evaluate(from_params_fn(f, params), x=x, y=y, **KW), reference)
  # As a transfer surrogate: the model itself, so the white-box result.
  assert evaluate(f, params, x=x, y=y, surrogate=from_params_fn(f, params),
                  **{**KW, 'suite': 'transfer'})['robust_accuracy'] == reference['robust_accuracy']


def test_adapters_compare_equal_so_compilations_are_reused():
  f = lambda x: x
  assert from_logits_fn(f) == from_logits_fn(f) and hash(from_logits_fn(f)) == hash(
      from_logits_fn(f))
  assert from_logits_fn(f) != from_logits_fn(lambda x: x)


def wrong(x, y, model, *args, **kw):
  with pytest.raises((TypeError, ValueError)) as e:
    evaluate(model, *args, x=x, y=y, **{**KW, **kw})
  return str(e.value)


def test_wrong_shapes_list_the_accepted_signatures(trained):  # noqa: F811
  params, x, y = trained
  accepted = ('apply_fn(params, state, x, train)', 'f(x) -> logits', 'f(params, x) -> logits',
              'from_logits_fn', 'from_params_fn')
  three = lambda a, b, c: a
  message = wrong(x, y, three, params, {})
  assert "signature is (a, b, c)" in message and all(s in message for s in accepted)
  # f(x) given params, f(params, x) given none, a 4-argument apply_fn said to be randomised.
  assert '(x), with params given' in wrong(x, y, lambda x: x, params)
  assert 'neither params nor state' in wrong(x, y, lambda p, x: x)
  assert 'randomized=True' in wrong(x, y, mlp_apply, params, {}, randomized=True)
  # An apply function that returns the bare logits.
  bare = lambda p, s, x, train: mlp_apply(p, s, x, train)[0]
  message = wrong(x, y, bare, params, {})
  assert 'not (logits of shape (1, C), new_state, features)' in message
  assert all(s in message for s in accepted)
  assert 'not callable' in wrong(x, y, 'model', params, {})
  assert 'carries its own params' in wrong(x, y, Classifier(mlp_apply, params, {}), params)
  with pytest.raises(ValueError, match='needs the points x'):
    evaluate(lambda x: x, eps=0.1)


def test_detection_reads_jitted_and_partial_functions(trained):  # noqa: F811
  params, x, _ = trained
  f = lambda p, x: mlp_apply(p, {}, x, False)[0]
  for model, args in ((jax.jit(functools.partial(f, params)), ()), (jax.jit(f), (params,))):
    logits, state, features = as_classifier(model, *args).apply_fn(params, None, x, False)
    np.testing.assert_allclose(logits, f(params, x), atol=1e-6)
    assert state is None and features == {}
