"""BPDA on the classic masked-gradient defence: input quantisation to 4 levels in front of a
small trained classifier (Athalye, Carlini & Wagner, ICML 2018, §4.1).

Plain PGD differentiates through round(·) and gets exactly zero gradients (the sanity check
flags every point); PGD with BPDA (identity backward) breaks the defence; gradient-free Square
agrees with BPDA within 5 points (≈ 2 binomial standard errors at n = 256 and 75% accuracy).
`pytest -s` prints the accuracies.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fat_jax.attacks import bpda, pgd_attack, square_attack, with_preprocessing
from fat_jax.evaluate import sanity
from fat_jax.evaluate import probe_batch
from fat_jax.losses import cross_entropy

CLASSES, SIDE, N_TEST = 4, 8, 256
AGREEMENT = 0.05


def quantise(x):
  """4 grey levels {0, 1/3, 2/3, 1}: a zero (or undefined) gradient everywhere."""
  return jnp.round(x * 3) / 3


def mlp_apply(params, state, x, train):
  h = jax.nn.relu(x.reshape(len(x), -1) @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2'], state, {}


def sample(templates, n, seed):
  """Class template (0.5 ± 0.08 per pixel) plus N(0, 0.1²) noise, clipped to [0, 1]."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, CLASSES, n)
  x = np.clip(templates[y] + 0.1 * rng.normal(size=(n, SIDE, SIDE, 1)), 0, 1)
  return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


@pytest.fixture(scope='module')
def defended():
  """An MLP trained (300 Adam steps) on quantised synthetic images; the test split."""
  templates = 0.5 + 0.08 * np.random.default_rng(0).choice([-1, 1], (CLASSES, SIDE, SIDE, 1))
  x_train, y_train = sample(templates, 2000, 1)
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {'w1': jax.random.normal(k1, (SIDE * SIDE, 64)) * 0.1, 'b1': jnp.zeros(64),
            'w2': jax.random.normal(k2, (64, CLASSES)) * 0.1, 'b2': jnp.zeros(CLASSES)}
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, x, y):
    loss = lambda p: cross_entropy(mlp_apply(p, None, quantise(x), True)[0], y).mean()
    updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for i in range(300):
    lo = (i * 100) % len(x_train)
    params, opt_state = step(params, opt_state, x_train[lo:lo + 100], y_train[lo:lo + 100])
  return params, *sample(templates, N_TEST, 2)


def accuracy(params, x, y):
  logits = with_preprocessing(mlp_apply, quantise)(params, None, x, False)[0]
  return float((logits.argmax(-1) == y).mean())


@pytest.mark.parametrize('eps', [0.05, 0.1])
def test_bpda_breaks_quantisation_where_plain_gradients_fail(defended, eps):
  params, x, y = defended
  plain = with_preprocessing(mlp_apply, quantise)
  through_bpda = with_preprocessing(mlp_apply, bpda(quantise))
  pgd = functools.partial(pgd_attack, params=params, state=None, x=x, y=y,
                          key=jax.random.key(1), eps=eps, alpha=eps / 4, steps=20)
  clean = accuracy(params, x, y)
  plain_pgd = accuracy(params, x + pgd(plain).delta, y)
  bpda_pgd = accuracy(params, x + pgd(through_bpda).delta, y)
  square = accuracy(params, x + square_attack(plain, params, None, x, y, jax.random.key(2),
                                              eps=eps, queries=1000).delta, y)
  print(f'eps={eps}: clean {clean:.4f}, PGD-20 {plain_pgd:.4f}, BPDA-PGD-20 {bpda_pgd:.4f}, '
        f'Square-1000 {square:.4f}')
  assert clean >= 0.95
  assert plain_pgd >= clean - 0.02           # only PGD's random start moves the points
  assert bpda_pgd <= clean - 0.2             # BPDA breaks the defence ...
  assert abs(square - bpda_pgd) <= AGREEMENT  # ... as far as a gradient-free attack does


def test_sanity_check_flags_the_zero_gradients_and_bpda_removes_them(defended):
  params, x, y = defended
  key = jax.random.key(3)
  _, zero = probe_batch(params, None, x, y, key, apply_fn=with_preprocessing(mlp_apply, quantise))
  check = sanity.check_zero_gradients(np.asarray(zero))
  assert check['status'] == sanity.WARN and check['share'] == 1.0
  _, zero = probe_batch(params, None, x, y, key,
                        apply_fn=with_preprocessing(mlp_apply, bpda(quantise)))
  assert sanity.check_zero_gradients(np.asarray(zero))['status'] == sanity.PASS


def test_bpda_forward_is_exact_and_backward_is_the_approximation():
  x = jnp.array([0.1, 0.4, 0.9])
  g = bpda(quantise)
  np.testing.assert_array_equal(g(x), quantise(x))
  np.testing.assert_array_equal(jax.grad(lambda v: g(v).sum())(x), jnp.ones(3))
  smooth = bpda(quantise, lambda v: 2.0 * v)
  np.testing.assert_array_equal(jax.grad(lambda v: (smooth(v) * v).sum())(x),
                                2.0 * x + quantise(x))
  assert float(jnp.abs(jax.grad(lambda v: quantise(v).sum())(x)).max()) == 0.0
