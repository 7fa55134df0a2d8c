"""FOSC (Wang et al. 2019, eq. 4) against a brute-force maximisation, and the DART attack's
stopping rule and schedule."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.attacks import dart_attack, dart_threshold, fosc, fosc_at, pgd_attack
from fat_jax.attacks.eot import loss_and_grad
from fat_jax.losses import cross_entropy
from tests.test_attacks import mlp_apply

EPS = 8 / 255


@pytest.fixture(scope='module')
def problem():
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = {'w1': jax.random.normal(k1, (4 * 4 * 3, 32)) * 0.5,
            'w2': jax.random.normal(k2, (32, 5))}
  x = jax.random.uniform(k3, (8, 4, 4, 3))
  y = jax.random.randint(k4, (8,), 0, 5)
  return params, {'count': jnp.zeros(())}, x, y


def test_fosc_is_the_maximum_over_the_vertices_of_the_ball():
  # max_{‖x − x⁰‖∞ ≤ ε} ⟨x − xᵏ, g⟩ is linear in x: attained at a vertex x⁰ + ε·s, s ∈ {±1}^d.
  rng = np.random.default_rng(0)
  n, d, eps = 5, 4, 0.3
  x0 = rng.uniform(size=(n, d))
  xk = x0 + rng.uniform(-eps, eps, size=(n, d))
  g = rng.normal(size=(n, d))
  vertices = x0[:, None, :] + eps * np.array(list(itertools.product((-1, 1), repeat=d)))
  brute = np.einsum('nvd,nd->nv', vertices - xk[:, None, :], g).max(axis=1)
  np.testing.assert_allclose(fosc(jnp.asarray(xk), jnp.asarray(x0), jnp.asarray(g), eps), brute,
                             rtol=1e-5, atol=1e-6)


def test_fosc_is_zero_at_a_stationary_vertex_and_nonnegative_inside():
  x0 = jnp.full((1, 3), 0.5)
  g = jnp.array([[1.0, -2.0, 0.5]])
  # the maximiser of ⟨x, g⟩ on the ball: x⁰ + ε·sign g
  assert float(fosc(x0 + 0.1 * jnp.sign(g), x0, g, 0.1)[0]) == pytest.approx(0.0, abs=1e-7)
  assert float(fosc(x0, x0, g, 0.1)[0]) == pytest.approx(0.1 * 3.5)


def test_fosc_at_uses_each_examples_own_loss_gradient(problem):
  params, state, x, y = problem
  delta = jnp.full_like(x, EPS / 2)
  one = fosc_at(mlp_apply, params, state, x[:1], y[:1], delta[:1], eps=EPS)
  batch = fosc_at(mlp_apply, params, state, x, y, delta, eps=EPS)
  np.testing.assert_allclose(batch[0], one[0], rtol=1e-6)


def run_dart(problem, threshold, **kw):
  params, state, x, y = problem
  return dart_attack(mlp_apply, params, state, x, y, jax.random.key(1), eps=EPS, alpha=EPS / 4,
                     steps=10, threshold=threshold, **kw)


def test_dart_with_infinite_threshold_returns_the_start(problem):
  params, state, x, y = problem
  out = run_dart(problem, jnp.inf)
  start = pgd_attack(mlp_apply, params, state, x, y, jax.random.key(1), eps=EPS, alpha=EPS / 4,
                     steps=0, freeze_misclassified=False)
  np.testing.assert_array_equal(out.delta, start.delta)
  assert int(out.steps.max()) == 0
  # the official code's first step is unconditional: one PGD step, then none
  one = run_dart(problem, jnp.inf, min_steps=1)
  first = pgd_attack(mlp_apply, params, state, x, y, jax.random.key(1), eps=EPS, alpha=EPS / 4,
                     steps=1, freeze_misclassified=False)
  np.testing.assert_array_equal(one.delta, first.delta)
  assert int(one.steps.min()) == int(one.steps.max()) == 1


@pytest.mark.parametrize('train', [False, True])
def test_dart_that_never_stops_is_plain_pgd(problem, train):
  params, state, x, y = problem
  out = run_dart(problem, -jnp.inf, train=train)
  pgd = pgd_attack(mlp_apply, params, state, x, y, jax.random.key(1), eps=EPS, alpha=EPS / 4,
                   steps=10, freeze_misclassified=False, train=train)
  np.testing.assert_array_equal(out.delta, pgd.delta)
  assert int(out.steps.min()) == 10
  assert int(out.state['count']) == int(pgd.state['count']) == (10 if train else 0)


def test_dart_stopped_examples_meet_the_threshold(problem):
  params, state, x, y = problem
  reached = fosc_at(mlp_apply, params, state, x, y, run_dart(problem, -jnp.inf).delta, eps=EPS)
  threshold = float(jnp.median(reached)) * 2  # some examples stop early, some do not
  out = run_dart(problem, threshold)
  stopped = np.asarray(out.steps) < 10
  assert 0 < stopped.sum() < len(stopped)
  final = np.asarray(fosc_at(mlp_apply, params, state, x, y, out.delta, eps=EPS))
  assert np.all(final[stopped] <= threshold)
  assert float(jnp.abs(out.delta).max()) <= EPS + 1e-6


def test_dart_threshold_decreases_linearly_to_zero():
  c = [float(dart_threshold(t, c_max=0.5, control_epochs=100)) for t in (0, 50, 100, 119)]
  assert c == pytest.approx([0.5, 0.25, 0.0, 0.0])
  with pytest.raises(ValueError, match='control_epochs'):
    dart_threshold(0, control_epochs=0)


def test_fosc_matches_the_official_per_example_formula(problem):
  # official pgd_attack.py: fosc_i = −⟨g_i, x_i − x⁰_i⟩ + ε‖g_i‖₁ with g = ∇ of each example's loss.
  params, state, x, y = problem
  delta = jax.random.uniform(jax.random.key(2), x.shape, minval=-EPS, maxval=EPS)
  g = np.asarray(loss_and_grad(mlp_apply, params, state, x + delta,
                               lambda z: cross_entropy(z, y)).grad).reshape(len(x), -1)
  d = np.asarray(delta).reshape(len(x), -1)
  expected = [-g[i] @ d[i] + EPS * np.abs(g[i]).sum() for i in range(len(x))]
  np.testing.assert_allclose(fosc_at(mlp_apply, params, state, x, y, delta, eps=EPS), expected,
                             rtol=1e-5)


def test_dart_jits_with_a_traced_threshold_and_unrolls(problem):
  params, state, x, y = problem
  attack = lambda p, s, c, unroll: dart_attack(mlp_apply, p, s, x, y, jax.random.key(1), eps=EPS,
                                               alpha=EPS / 4, steps=3, threshold=c, unroll=unroll)
  c = dart_threshold(40, c_max=0.5, control_epochs=100)
  jitted = jax.jit(attack, static_argnums=3)
  eager = attack(params, state, c, False)
  for unroll in (False, True):
    out = jitted(params, state, c, unroll)
    np.testing.assert_allclose(out.delta, eager.delta, atol=1e-7)
    np.testing.assert_array_equal(out.steps, eager.steps)


def test_fosc_falls_along_pgd_and_dart_steps_fall_with_the_threshold(problem):
  params, state, x, y = problem
  mean_fosc = lambda delta: float(fosc_at(mlp_apply, params, state, x, y, delta, eps=EPS).mean())
  pgd = jax.jit(lambda k: pgd_attack(mlp_apply, params, state, x, y, jax.random.key(1), eps=EPS,
                                     alpha=EPS / 4, steps=k, freeze_misclassified=False).delta,
                static_argnums=0)
  dart = jax.jit(lambda c: run_dart(problem, c))
  along_pgd = [mean_fosc(pgd(k)) for k in (0, 2, 10)]
  thresholds = (0.5, 0.1, 0.01, 0.0)
  runs = [dart(c) for c in thresholds]
  steps = [float(r.steps.mean()) for r in runs]
  print(f'\nmean FOSC after PGD-0/2/10: {along_pgd}\nDART c_t {thresholds}: mean steps {steps}, '
        f'mean FOSC {[mean_fosc(r.delta) for r in runs]}')
  assert along_pgd[0] > along_pgd[1] > along_pgd[2]
  assert steps == sorted(steps) and steps[0] < steps[-1] == 10
