"""Invariants of the FGSM family and PGD on a small model with a pure apply function."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.attacks import fgsm_attack, per_example, pgd_attack
from fat_jax.losses import cross_entropy, margin_loss

EPS = 8 / 255
FAMILY = {  # name: (init, init_scale, alpha / eps, project)
    'fgsm': ('zero', 1.0, 1.0, True),
    'fgsm_rs': ('uniform', 1.0, 1.25, True),
    'n_fgsm': ('uniform', 2.0, 1.0, False),
}


def mlp_apply(params, state, x, train):
  """A two-layer MLP with a counter as 'state' (a stand-in for BN running stats)."""
  h = jnp.tanh(x.reshape(len(x), -1) @ params['w1'])
  new_state = {'count': state['count'] + 1} if train else state
  return h @ params['w2'], new_state, {'A': h}


@pytest.fixture(scope='module')
def problem():
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = {'w1': jax.random.normal(k1, (4 * 4 * 3, 32)) * 0.5,
            'w2': jax.random.normal(k2, (32, 5))}
  x = jax.random.uniform(k3, (16, 4, 4, 3))
  x = x.at[:4].set(jnp.round(x[:4]))  # some pixels on the box boundary
  y = jax.random.randint(k4, (16,), 0, 5)
  return params, {'count': jnp.zeros(())}, x, y


def run_fgsm(problem, name, eps=EPS, key=jax.random.key(1), **kw):
  params, state, x, y = problem
  init, scale, alpha, project = FAMILY[name]
  return fgsm_attack(mlp_apply, params, state, x, y, key, eps=eps, alpha=alpha * eps, init=init,
                     init_scale=scale, project=project, **kw)


def run_pgd(problem, eps=EPS, key=jax.random.key(1), **kw):
  params, state, x, y = problem
  kw = {'alpha': eps / 4, 'steps': 10, **kw}
  return pgd_attack(mlp_apply, params, state, x, y, key, eps=eps, **kw)


def assert_in_box(x, delta, bound):
  assert float(jnp.abs(delta).max()) <= bound + 1e-6
  assert float((x + delta).min()) >= -1e-7 and float((x + delta).max()) <= 1 + 1e-7


@pytest.mark.parametrize('name', sorted(FAMILY))
def test_fgsm_family_stays_in_ball_and_box(problem, name):
  delta = run_fgsm(problem, name).delta
  init, scale, alpha, project = FAMILY[name]
  # Projected methods stay in the ε-ball; N-FGSM reaches at most kε + α.
  assert_in_box(problem[2], delta, EPS if project else (scale + alpha) * EPS)
  assert float(jnp.abs(delta).max()) > 0.9 * EPS


def test_pgd_stays_in_ball_and_box(problem):
  for restarts in (1, 3):
    assert_in_box(problem[2], run_pgd(problem, restarts=restarts).delta, EPS)


@pytest.mark.parametrize('name', sorted(FAMILY))
def test_zero_eps_is_identity(problem, name):
  assert float(jnp.abs(run_fgsm(problem, name, eps=0.0).delta).max()) == 0.0


def test_zero_eps_pgd_is_identity(problem):
  assert float(jnp.abs(run_pgd(problem, eps=0.0, restarts=2).delta).max()) == 0.0


def test_negative_eps_is_rejected(problem):
  with pytest.raises(ValueError, match='eps'):
    run_fgsm(problem, 'fgsm', eps=-0.1)
  with pytest.raises(ValueError, match='eps'):
    run_pgd(problem, eps=-0.1)


def test_fgsm_equals_one_pgd_step_from_the_same_start(problem):
  key = jax.random.key(3)
  pgd = run_pgd(problem, key=key, alpha=1.25 * EPS, steps=1, freeze_misclassified=False,
                train=True)
  # pgd_attack draws restart r's start from fold_in(key, r).
  fgsm = run_fgsm(problem, 'fgsm_rs', key=jax.random.fold_in(key, 0), train=True)
  np.testing.assert_array_equal(fgsm.delta, pgd.delta)
  assert int(fgsm.state['count']) == int(pgd.state['count']) == 1


def test_bn_mode_is_explicit(problem):
  assert int(run_fgsm(problem, 'fgsm_rs', train=True).state['count']) == 1
  assert int(run_fgsm(problem, 'fgsm_rs', train=False).state['count']) == 0
  assert int(run_pgd(problem, steps=4, train=True, freeze_misclassified=False).state['count']) == 4


def test_jit_matches_eager(problem):
  params, state, x, y = problem
  key = jax.random.key(5)
  for name in FAMILY:
    init, scale, alpha, project = FAMILY[name]
    attack = functools.partial(fgsm_attack, mlp_apply, eps=EPS, alpha=alpha * EPS, init=init,
                               init_scale=scale, project=project)
    np.testing.assert_allclose(jax.jit(attack)(params, state, x, y, key).delta,
                               attack(params, state, x, y, key).delta, atol=1e-7)
  pgd = functools.partial(pgd_attack, mlp_apply, eps=EPS, alpha=EPS / 4, steps=5, restarts=2)
  np.testing.assert_allclose(jax.jit(pgd)(params, state, x, y, key).delta,
                             pgd(params, state, x, y, key).delta, atol=1e-7)


def test_pgd_freezes_misclassified_examples(problem):
  params, state, x, y = problem
  logits = mlp_apply(params, state, x, False)[0]
  wrong = np.asarray(logits.argmax(-1) != y)
  assert wrong.any() and (~wrong).any()
  key = jax.random.key(7)
  start = run_pgd(problem, key=key, steps=0).delta   # the random start alone
  frozen = run_pgd(problem, key=key, steps=5, alpha=1e-3).delta
  # Examples misclassified at the (nearly clean) start never move.
  start_wrong = np.asarray(mlp_apply(params, state, x + start, False)[0].argmax(-1) != y)
  np.testing.assert_array_equal(np.asarray(frozen)[start_wrong], np.asarray(start)[start_wrong])
  assert not np.allclose(np.asarray(frozen)[~start_wrong], np.asarray(start)[~start_wrong])


def reference_pgd(problem, key, *, steps, restarts, loss_fn, alpha=EPS / 4):
  """A straightforward transcription of locuslab's attack_pgd (Python loops, per-example masks)."""
  params, state, x, y = problem
  logits_of = lambda d: mlp_apply(params, state, x + d, False)[0]
  best_delta, best_loss = jnp.zeros_like(x), jnp.full((len(x),), -jnp.inf)
  for r in range(restarts):
    d = jax.random.uniform(jax.random.fold_in(key, r), x.shape, x.dtype, -EPS, EPS)
    d = jnp.clip(x + d, 0, 1) - x
    for _ in range(steps):
      active = logits_of(d).argmax(-1) == y
      g = jax.grad(lambda d: loss_fn(logits_of(d), y).mean())(d)
      moved = jnp.clip(x + jnp.clip(d + alpha * jnp.sign(g), -EPS, EPS), 0, 1) - x
      d = jnp.where(active[:, None, None, None], moved, d)
    restart_loss = loss_fn(logits_of(d), y)
    take = restart_loss >= best_loss
    best_delta = jnp.where(take[:, None, None, None], d, best_delta)
    best_loss = jnp.maximum(best_loss, restart_loss)
  return best_delta


@pytest.mark.parametrize('loss, loss_fn', [('ce', cross_entropy), ('margin', margin_loss)])
def test_pgd_matches_a_reference_transcription(problem, loss, loss_fn):
  key = jax.random.key(9)
  ours = run_pgd(problem, key=key, steps=3, restarts=3, loss=loss).delta
  ref = reference_pgd(problem, key, steps=3, restarts=3, loss_fn=loss_fn)
  np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_unrolled_pgd_equals_the_loop(problem):
  """`unroll` changes how XLA compiles the steps, not what they compute (state included)."""
  for restarts in (1, 2):
    looped = run_pgd(problem, restarts=restarts, train=True)
    unrolled = run_pgd(problem, restarts=restarts, train=True, unroll=True)
    np.testing.assert_allclose(unrolled.delta, looped.delta, atol=1e-6)
    assert float(unrolled.state['count']) == float(looped.state['count']) == 10 * restarts


def test_per_example_scales_each_example_by_its_own_value():
  x = jnp.ones((3, 2, 2, 1))
  v = jnp.array([1.0, 2.0, 3.0])
  assert per_example(v, x).shape == (3, 1, 1, 1)
  np.testing.assert_array_equal((per_example(v, x) * x).sum(axis=(1, 2, 3)), 4 * v)
  assert per_example(v, v).shape == (3,)
