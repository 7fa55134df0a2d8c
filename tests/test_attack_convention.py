"""One calling convention for every attack: a plain f(x) -> logits gives the δ of the apply form
of the same classifier, ε and x are refused with evaluate's one-line messages (concrete values
only: a jitted step still traces), and the torchattacks-style one-liners return x + δ."""
import os
import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax import attacks
from fat_jax.attacks import (apgd_attack, apgd_targeted_attack, cw_l2_attack, dart_attack,
                             deepfool_attack, fab_attack, fab_targeted_attack,
                             fab_untargeted_attack, fgsm_attack, init_perturbation, kl_attack,
                             md_attack, mdmt_attack, mifgsm_attack, mm_attack, pgd_attack,
                             pma_attack, square_attack)
from fat_jax.evaluate import evaluate

EPS = 8 / 255
KEY = jax.random.key(3)


def logits(params, x):
  hidden = jnp.tanh(x.reshape(len(x), -1) @ params['w1'])
  return hidden @ params['w2']


def apply_fn(params, state, x, train):
  del train
  return logits(params, x), state, {}


@pytest.fixture(scope='module')
def problem():
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = {'w1': jax.random.normal(k1, (6 * 6 * 1, 16)), 'w2': jax.random.normal(k2, (16, 4))}
  x = jax.random.uniform(k3, (12, 6, 6, 1))
  y = jax.random.randint(k4, (12,), 0, 4)
  return params, x, y


# name -> (attack, its keywords, takes a key)
CASES = {
    'fgsm': (fgsm_attack, dict(eps=EPS, alpha=1.25 * EPS, init='uniform'), True),
    'pgd': (pgd_attack, dict(eps=EPS, alpha=EPS / 4, steps=3, restarts=2), True),
    'pgd_l2': (pgd_attack, dict(eps=0.5, alpha=0.1, steps=3, norm='L2'), True),
    'mifgsm': (mifgsm_attack, dict(eps=EPS, steps=3), False),
    'apgd': (apgd_attack, dict(eps=EPS, steps=4, loss='dlr'), True),
    'apgd_t': (apgd_targeted_attack, dict(eps=EPS, steps=4, n_target_classes=2), True),
    'fab': (fab_attack, dict(eps=0.3, steps=3, target=jnp.zeros(12, jnp.int32)), True),
    'fab_t': (fab_targeted_attack, dict(eps=0.3, steps=3, n_target_classes=2), True),
    'fab_untargeted': (fab_untargeted_attack, dict(eps=0.3, steps=3, restarts=2), True),
    'mm': (mm_attack, dict(eps=EPS, steps=4, n_target_classes=2), True),
    'md': (md_attack, dict(eps=EPS, steps=4, change_point=2), True),
    'mdmt': (mdmt_attack, dict(eps=EPS, steps=4, change_point=2), True),
    'pma': (pma_attack, dict(eps=EPS, steps=4), True),
    'square': (square_attack, dict(eps=EPS, queries=20), True),
    'cw_l2': (cw_l2_attack, dict(max_iterations=5, binary_search_steps=2), False),
    'deepfool': (deepfool_attack, dict(steps=3), False),
    'dart': (dart_attack, dict(eps=EPS, alpha=EPS / 4, steps=3, threshold=0.1), True),
}


@pytest.mark.parametrize('name', CASES)
def test_plain_f_gives_the_delta_of_the_apply_form(problem, name):
  params, x, y = problem
  attack, kw, keyed = CASES[name]
  f = lambda z: logits(params, z)
  applied = attack(apply_fn, params, {}, x, y, *((KEY,) if keyed else ()), **kw)
  plain = attack(f, x, y, **({'key': KEY} if keyed else {}), **kw)
  np.testing.assert_array_equal(plain.delta, applied.delta)
  assert plain.state is None and type(plain) is type(applied)
  assert float(jnp.abs(applied.delta).max()) > 0   # the comparison is not between zeros


def test_kl_attack_takes_labels_in_the_plain_form_and_ignores_them(problem):
  params, x, y = problem
  kw = dict(eps=EPS, alpha=EPS / 4, steps=3)
  applied = kl_attack(apply_fn, params, {}, x, KEY, **kw).delta
  f = lambda z: logits(params, z)
  np.testing.assert_array_equal(kl_attack(f, x, y, key=KEY, **kw).delta, applied)
  np.testing.assert_array_equal(kl_attack(f, x, key=KEY, **kw).delta, applied)


def test_the_plain_form_defaults_to_key_zero(problem):
  params, x, y = problem
  f = lambda z: logits(params, z)
  kw = dict(eps=EPS, alpha=EPS / 4, steps=2)
  np.testing.assert_array_equal(pgd_attack(f, x, y, **kw).delta,
                                pgd_attack(apply_fn, params, {}, x, y, jax.random.key(0),
                                           **kw).delta)


def evaluate_message(f, x, y, eps):
  with pytest.raises(ValueError) as raised:
    evaluate(f, x=x, y=y, eps=eps, suite='pgd', pgd_steps=1, progress=False)
  return str(raised.value)


@pytest.mark.parametrize('form', ['plain', 'apply'])
def test_eps_in_0_255_units_and_x_outside_the_box_get_evaluates_one_line(problem, form):
  params, x, y = problem
  f = lambda z: logits(params, z)
  run = ((lambda **kw: fgsm_attack(f, kw.pop('x', x), y, **kw)) if form == 'plain' else
         (lambda **kw: fgsm_attack(apply_fn, params, {}, kw.pop('x', x), y, KEY, **kw)))
  for eps, problem_x in ((8, x), (-0.1, x), (float('inf'), x), (EPS, 255 * x), (EPS, x - 0.5)):
    with pytest.raises(ValueError) as raised:
      run(eps=eps, alpha=eps, x=problem_x)
    message = str(raised.value)
    assert '\n' not in message and message in evaluate_message(f, problem_x, y, eps)
  l2 = dict(eps=-1.0, alpha=0.1, steps=1, norm='L2')
  with pytest.raises(ValueError, match='L2 radius'):
    pgd_attack(apply_fn, params, {}, x, y, KEY, **l2) if form == 'apply' else pgd_attack(
        f, x, y, **l2)
  assert 'write 8/255 = 0.03137' in evaluate_message(f, x, y, 8)


def test_a_wrong_model_in_the_plain_form_is_one_clear_error(problem):
  params, x, y = problem
  with pytest.raises(TypeError, match=r'apply form|apply function'):
    pgd_attack(apply_fn, x, y, eps=EPS, alpha=EPS / 4, steps=1)
  with pytest.raises(TypeError, match='points and labels'):
    pgd_attack(lambda z: logits(params, z), x, eps=EPS, alpha=EPS / 4, steps=1)
  with pytest.raises(ValueError, match='randomised'):
    apgd_attack(lambda z: logits(params, z), x, y, eps=EPS, randomized=True)


def test_traced_values_pass_unchecked_so_a_jitted_step_still_runs(problem):
  params, x, y = problem

  @jax.jit
  def step(p, x, eps):   # the README's training step: f closes over the traced parameters
    f = lambda z: logits(p, z)
    return fgsm_attack(f, x, y, key=KEY, eps=eps, alpha=eps, init='uniform').delta

  delta = step(params, x, EPS)
  eager = fgsm_attack(apply_fn, params, {}, x, y, KEY, eps=EPS, alpha=EPS, init='uniform').delta
  np.testing.assert_allclose(delta, eager, atol=1e-7)
  assert step(params, 255 * x, 8.0).shape == x.shape   # traced: not checked (nor refused)


def test_every_attack_defaults_to_running_statistics():
  counting = lambda p, s, x, train: (x.reshape(len(x), -1)[:, :3] @ p,
                                     {'n': s['n'] + train}, {})
  p, s = jnp.ones((3, 3)), {'n': jnp.zeros((), jnp.int32)}
  x, y = jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 1])
  for attack, kw in ((fgsm_attack, dict(alpha=EPS)), (pgd_attack, dict(alpha=EPS, steps=2)),
                     (dart_attack, dict(alpha=EPS, steps=2, threshold=0.0))):
    assert int(attack(counting, p, s, x, y, KEY, eps=EPS, **kw).state['n']) == 0
  assert int(mifgsm_attack(counting, p, s, x, y, eps=EPS, steps=2).state['n']) == 0
  assert int(kl_attack(counting, p, s, x, KEY, eps=EPS, alpha=EPS, steps=2).state['n']) == 0


def test_one_liners_return_the_adversarial_images(problem):
  params, x, y = problem
  f = lambda z: logits(params, z)
  key0 = jax.random.key(0)
  np.testing.assert_array_equal(
      attacks.pgd(f, x, y, eps=EPS, steps=3),
      x + pgd_attack(apply_fn, params, {}, x, y, key0, eps=EPS, alpha=EPS / 4, steps=3).delta)
  np.testing.assert_array_equal(
      attacks.tpgd(f, x, eps=EPS, steps=2),
      x + kl_attack(apply_fn, params, {}, x, key0, eps=EPS, alpha=EPS / 4, steps=2).delta)
  np.testing.assert_array_equal(
      attacks.mifgsm(f, x, y, eps=EPS, steps=2),
      x + mifgsm_attack(apply_fn, params, {}, x, y, eps=EPS, steps=2).delta)
  np.testing.assert_array_equal(attacks.deepfool(f, x, y, steps=2),
                                x + deepfool_attack(apply_fn, params, {}, x, y, steps=2).delta)


@pytest.mark.slow
def test_every_one_liner_stays_in_the_ball_and_the_box(problem):
  params, x, y = problem
  f = lambda z: logits(params, z)
  bounded = dict(fgsm={}, pgd=dict(steps=2), mifgsm=dict(steps=2), apgd=dict(steps=3),
                 apgd_t=dict(steps=3, n_target_classes=2), fab=dict(steps=2),
                 fab_t=dict(steps=2, n_target_classes=2), square=dict(queries=10),
                 mm=dict(steps=3, n_target_classes=2), tpgd=dict(steps=2))
  for name, kw in bounded.items():
    adv = getattr(attacks, name)(f, x, y, eps=EPS, **kw)
    assert adv.shape == x.shape and float(jnp.abs(adv - x).max()) <= EPS + 1e-6, name
    assert 0 <= float(adv.min()) and float(adv.max()) <= 1, name
  for name, kw in (('deepfool', dict(steps=3)), ('cw_l2', dict(max_iterations=3))):
    adv = getattr(attacks, name)(f, x, y, **kw)
    assert adv.shape == x.shape and 0 <= float(adv.min()) and float(adv.max()) <= 1, name


def test_fgsm_returns_its_start_point(problem):
  params, x, y = problem
  f = lambda z: logits(params, z)
  key = jax.random.key(9)
  nfgsm = dict(eps=EPS, init='uniform', init_scale=2.0, project=False, key=key)
  adv, start = attacks.fgsm(f, x, y, return_start=True, **nfgsm)
  np.testing.assert_array_equal(start, x + init_perturbation(key, x, EPS, 'uniform', 2.0))
  np.testing.assert_array_equal(adv, attacks.fgsm(f, x, y, **nfgsm))
  same, start_again = attacks.fgsm(f, x, y, alpha=0.0, return_start=True, **nfgsm)
  np.testing.assert_allclose(same, start_again, atol=1e-7)   # α = 0: δ is the start η
  assert float(jnp.abs(adv - x).max()) > EPS   # N-FGSM: no projection, |δ| up to 3ε


def test_submodules_stay_importable_by_their_full_path():
  from fat_jax.attacks.pgd import pgd_restart  # noqa: F401 (the module, not the one-liner)
  assert callable(attacks.pgd) and attacks.pgd.__module__ == 'fat_jax.attacks.oneliners'


def test_the_api_doc_example_runs(problem):
  params, x, y = problem
  with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs',
                         'api.md'), encoding='utf-8') as doc:
    blocks = [textwrap.dedent(b) for b in re.findall(r'```python\n(.*?)```', doc.read(), re.S)
              if 'attacks.pgd(' in b]
  assert len(blocks) == 1, 'docs/api.md has no one-liner example'
  namespace = dict(f=lambda z: logits(params, z), x=x, y=y, key=KEY)
  exec(compile(blocks[0], 'docs/api.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['x_adv'].shape == namespace['x_start'].shape == x.shape


def test_both_forms_by_keyword(problem):
  params, x, y = problem
  kw = dict(eps=EPS, alpha=EPS / 4, steps=2)
  by_keyword = pgd_attack(apply_fn, params=params, state={}, x=x, y=y, key=KEY, **kw).delta
  np.testing.assert_array_equal(by_keyword,
                                pgd_attack(apply_fn, params, {}, x, y, KEY, **kw).delta)
  np.testing.assert_array_equal(
      pgd_attack(lambda z: logits(params, z), x=x, y=y, key=KEY, **kw).delta, by_keyword)
  with pytest.raises(ValueError, match='eps=8.0 is outside'):
    pgd_attack(apply_fn, params=params, state={}, x=x, y=y, key=KEY, eps=8, alpha=2, steps=1)
