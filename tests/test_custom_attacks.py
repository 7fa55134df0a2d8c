"""The lecture's attacks in the `custom` suite: 'deepfool' (projected onto the ε-ball and the
box before scoring), 'mifgsm', 'pgd_margin' (the former 'cw'), and the names refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.attacks import deepfool_attack, mifgsm_attack, pgd_attack
from fat_jax.evaluate import evaluate
from fat_jax.evaluate.suites import SuiteOptions, attack_batch
from tests.test_apgd import mlp_apply, trained  # noqa: F401

EPS = 0.1
OPTIONS = SuiteOptions(pgd_steps=5, pgd_restarts=1)


def run(name, params, x, y):
  return attack_batch(params, {}, x, y, jax.random.key(3), EPS, 0, apply_fn=mlp_apply,
                      name=name, options=OPTIONS)


def test_deepfool_is_the_minimal_perturbation_projected_onto_the_ball_and_box(trained):  # noqa: F811
  params, x, y = trained
  delta, forward, backward = run('deepfool', params, x, y)
  raw = deepfool_attack(mlp_apply, params, {}, x, y, norm='linf')
  size = np.abs(np.asarray(raw.delta)).reshape(len(x), -1).max(axis=1)
  assert np.abs(delta).max() <= EPS + 1e-6 and 0 <= float((x + delta).min())
  assert float((x + delta).max()) <= 1
  inside = size <= EPS          # DeepFool found a perturbation within ε: kept as it is
  assert 0 < inside.sum() < len(x)
  np.testing.assert_allclose(np.asarray(delta)[inside], np.asarray(raw.delta)[inside], atol=1e-7)
  np.testing.assert_array_equal(forward, raw.steps + 1)
  np.testing.assert_array_equal(backward, raw.steps * 10)   # one backward per class and step


def test_mifgsm_and_pgd_margin_are_the_library_attacks(trained):  # noqa: F811
  params, x, y = trained
  delta, forward, _ = run('mifgsm', params, x, y)
  expected = mifgsm_attack(mlp_apply, params, {}, x, y, eps=EPS, steps=10).delta
  np.testing.assert_allclose(delta, expected, atol=1e-6)   # jitted vs not: float rounding
  assert int(forward[0]) == 10
  delta, *_ = run('pgd_margin', params, x, y)
  expected = pgd_attack(mlp_apply, params, {}, x, y, jax.random.key(3), eps=EPS,
                        alpha=0.25 * EPS, steps=5, restarts=1, loss='margin').delta
  np.testing.assert_allclose(delta, expected, atol=1e-6)


def test_the_custom_suite_runs_them_with_valid_examples(trained):  # noqa: F811
  params, x, y = trained
  report = evaluate(mlp_apply, params, {}, x, y, eps=EPS, suite='custom',
                    attacks=['deepfool', 'mifgsm', 'pgd_margin'], pgd_steps=5, pgd_restarts=1,
                    batch_size=64, progress=False, square_check=False)
  assert report['attacks'] == ['deepfool', 'mifgsm', 'pgd_margin']
  assert report['robust_accuracy'] < report['clean_accuracy']
  assert report['checks']['validity']['status'] == 'pass'
  x_adv = report['x_adv']
  correct_at = np.asarray(mlp_apply(params, {}, jnp.asarray(x_adv), False)[0].argmax(-1) == y)
  np.testing.assert_array_equal(correct_at, report['flags']['robust'])


@pytest.mark.parametrize('name, match', [('cw', "now 'pgd_margin'"),
                                         ('cw_l2', 'no ε-bounded suite attack')])
def test_cw_names_are_refused_with_the_name_to_use(trained, name, match):  # noqa: F811
  params, x, y = trained
  with pytest.raises(ValueError, match=match):
    evaluate(mlp_apply, params, {}, x, y, eps=EPS, suite='custom', attacks=[name],
             progress=False)
