"""APGD / APGD-T: checkpoints, DLR losses, fidelity to the reference loop, strength, EOT."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.attacks import (apgd_attack, apgd_checkpoints, apgd_targeted_attack, pgd_attack,
                             with_input_noise)
from fat_jax.evaluate import evaluate
from fat_jax.losses import accuracy, cross_entropy, dlr_loss, dlr_targeted_loss

EPS = 8 / 255


def mlp_apply(params, state, x, train):
  h = jnp.tanh(x.reshape(len(x), -1) @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2'], state, {}


def init_mlp(key, dim, hidden=32, classes=10, scale=1.0):
  k1, k2 = jax.random.split(key)
  return {'w1': scale * jax.random.normal(k1, (dim, hidden)) / np.sqrt(dim),
          'b1': jnp.zeros(hidden),
          'w2': scale * jax.random.normal(k2, (hidden, classes)) / np.sqrt(hidden),
          'b2': jnp.zeros(classes)}


def toy_data(key, n, classes=10, shape=(4, 4, 1), noise=0.08):
  """Gaussian blobs around random class means in [0.2, 0.8]^D (well separated)."""
  k1, k2 = jax.random.split(key)
  means = jax.random.uniform(k1, (classes, int(np.prod(shape))), minval=0.2, maxval=0.8)
  y = jnp.arange(n) % classes
  x = jnp.clip(means[y] + noise * jax.random.normal(k2, (n, means.shape[1])), 0, 1)
  return x.reshape((n,) + shape), y


@functools.partial(jax.jit, static_argnames=('steps',))
def train_mlp(params, x, y, steps=300, lr=0.5):
  """Full-batch plain SGD on the mean cross-entropy."""
  def step(_, p):
    g = jax.grad(lambda p: cross_entropy(mlp_apply(p, {}, x, True)[0], y).mean())(p)
    return jax.tree.map(lambda a, b: a - lr * b, p, g)
  return jax.lax.fori_loop(0, steps, step, params)


@pytest.fixture(scope='module')
def trained():
  x, y = toy_data(jax.random.key(0), 200)
  params = train_mlp(init_mlp(jax.random.key(1), 16), x, y)
  return params, x[:64], y[:64]


@pytest.fixture(scope='module')
def untrained():
  """A random MLP; labels = its predictions except for the first three points."""
  x, _ = toy_data(jax.random.key(2), 16, shape=(4, 4, 3))
  params = init_mlp(jax.random.key(3), 48, scale=3.0)
  y = mlp_apply(params, {}, x, False)[0].argmax(-1)
  return params, x, y.at[:3].set((y[:3] + 1) % 10)


def test_checkpoints_for_100_iterations():
  points = apgd_checkpoints(100)
  assert points == [0, 22, 41, 57, 70, 80, 87, 93, 99]
  assert np.diff(points).tolist() == [22, 19, 16, 13, 10, 7, 6, 6]
  assert apgd_checkpoints(10) == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_dlr_hand_values():
  z = jnp.array([[3.0, 1.0, 2.0, 0.5], [3.0, 1.0, 2.0, 0.5], [0.0, 4.0, 1.0, 2.0]])
  y = jnp.array([0, 2, 1])
  # sorted rows: 3 2 1 .5 | 3 2 1 .5 | 4 2 1 0
  np.testing.assert_allclose(dlr_loss(z, y), [-(3 - 2) / 2, -(2 - 3) / 2, -(4 - 2) / 3],
                             rtol=1e-6)
  t = jnp.array([3, 1, 3])
  np.testing.assert_allclose(dlr_targeted_loss(z, y, t),
                             [-(3 - 0.5) / 2.25, -(2 - 1) / 2.25, -(4 - 2) / 3.5], rtol=1e-6)
  # Invariant to shifting and scaling the logits.
  np.testing.assert_allclose(dlr_loss(10 * z - 7, y), dlr_loss(z, y), rtol=1e-5)
  with pytest.raises(ValueError, match='4 classes'):
    dlr_targeted_loss(z[:, :3], y, t % 3)


def reference_apgd_run(logits_of, x, y, start, loss_fn, steps, eps, rho=0.75):
  """autopgd_base.py's attack_single_run (L∞, NumPy masks, the wrapping ``loss_steps[-1]``) on
  a subset, in δ coordinates: (best-loss point, its loss, last misclassified point, fooled)."""
  box = lambda d: np.clip(x + d, 0, 1) - x

  def loss_grad(d):
    lo = lambda d: loss_fn(logits_of(x + d))
    return (np.array(lo(d)), np.array(jax.grad(lambda d: lo(d).sum())(d)),
            np.array(logits_of(x + d)))

  n_iter_2, n_iter_min, size_decr = (max(int(f * steps), 1) for f in (0.22, 0.06, 0.03))
  expand = lambda v: v[:, None, None, None]
  d = np.array(start)
  d_best, d_best_adv = d.copy(), d.copy()
  loss_steps = np.zeros((steps, len(x)))
  loss, grad, logits = loss_grad(d)
  acc = logits.argmax(-1) == y
  loss_best, grad_best = loss.copy(), grad.copy()
  step = np.full(len(x), 2 * eps, np.float32)
  d_old, k, counter3 = d.copy(), n_iter_2, 0
  loss_best_last_check, reduced_last_check = loss_best.copy(), np.ones(len(x), bool)
  for i in range(steps):
    grad2, d_old = d - d_old, d.copy()
    a = 0.75 if i > 0 else 1.0
    d1 = box(np.clip(d + expand(step) * np.sign(grad), -eps, eps))
    d = box(np.clip(d + (d1 - d) * a + grad2 * (1 - a), -eps, eps))
    loss, grad, logits = loss_grad(d)
    pred = logits.argmax(-1) == y
    acc &= pred
    d_best_adv[~pred] = d[~pred]
    loss_steps[i] = loss
    ind = loss > loss_best
    d_best[ind], grad_best[ind], loss_best[ind] = d[ind], grad[ind], loss[ind]
    counter3 += 1
    if counter3 == k:
      t = sum((loss_steps[i - c] > loss_steps[i - c - 1]).astype(float) for c in range(k))
      fl = (t <= k * rho) | (~reduced_last_check & (loss_best_last_check >= loss_best))
      reduced_last_check, loss_best_last_check = fl.copy(), loss_best.copy()
      step[fl] /= 2.0
      d[fl], grad[fl] = d_best[fl], grad_best[fl]
      k, counter3 = max(k - size_decr, n_iter_min), 0
  return d_best, loss_best, d_best_adv, ~acc


def reference_apgd(params, x, y, start, loss_fn, steps, eps, rho=0.75):
  """`reference_apgd_run` on the MLP: the last misclassified point where one was found, else the
  best-loss point, and the fooled flags."""
  logits_of = lambda z: mlp_apply(params, {}, z, False)[0]
  d_best, _, d_best_adv, fooled = reference_apgd_run(logits_of, np.asarray(x), np.asarray(y),
                                                     start, loss_fn, steps, eps, rho)
  return np.where(fooled[:, None, None, None], d_best_adv, d_best), fooled


@pytest.mark.parametrize('loss', ['dlr_targeted'])
def test_apgd_matches_a_transcription_of_the_reference(untrained, loss):
  params, x, y = untrained
  key, steps, eps = jax.random.key(4), 30, 0.05
  target = (y + 3) % 10
  ours = apgd_attack(mlp_apply, params, {}, x, y, key, eps=eps, steps=steps, loss=loss,
                     target=target).delta
  # apgd_attack: (clean key, runs key); run 0: fold_in(runs key, 0) → (start key, draw key).
  start_key = jax.random.split(jax.random.fold_in(jax.random.split(key)[1], 0))[0]
  t = jax.random.uniform(start_key, x.shape, x.dtype, -1.0, 1.0)
  start = eps * t / (jnp.abs(t).reshape(len(x), -1).max(1)[:, None, None, None] + 1e-12)
  start = jnp.clip(x + start, 0, 1) - x
  loss_fn = {'ce': lambda z: cross_entropy(z, y),
             'dlr_targeted': lambda z: dlr_targeted_loss(z, y, target)}[loss]
  ref, fooled = reference_apgd(params, x, y, start, loss_fn, steps, eps)
  clean_ok = np.asarray(mlp_apply(params, {}, x, False)[0].argmax(-1) == y)
  assert clean_ok.sum() >= 4 and 0 < fooled[clean_ok].sum() < clean_ok.sum()
  np.testing.assert_allclose(np.asarray(ours)[clean_ok], ref[clean_ok], atol=1e-6)
  assert not np.asarray(ours)[~clean_ok].any()


def attack_accuracy(params, x, y, delta):
  return float(accuracy(mlp_apply(params, {}, x + delta, False)[0], y).mean())


def test_apgd_is_not_weaker_than_pgd_on_a_trained_model(trained):
  params, x, y = trained
  eps, key = 0.1, jax.random.key(5)
  clean = attack_accuracy(params, x, y, 0.0)
  pgd = attack_accuracy(params, x, y, pgd_attack(mlp_apply, params, {}, x, y, key, eps=eps,
                                                 alpha=eps / 4, steps=50).delta)
  apgd = attack_accuracy(params, x, y, apgd_attack(mlp_apply, params, {}, x, y, key, eps=eps,
                                                   steps=50).delta)
  assert clean > 0.9 and 0.1 < pgd < clean
  assert apgd <= pgd


@functools.lru_cache
def jitted(attack, **kw):
  """`attack` on the MLP, jitted with ε as an argument (one compilation per setting)."""
  return jax.jit(lambda params, x, y, key, eps: attack(mlp_apply, params, {}, x, y, key, eps=eps,
                                                      steps=8, **kw).delta)


@pytest.mark.parametrize('attack, kw', [
    (apgd_attack, (('loss', 'dlr'), ('restarts', 2))),
    (apgd_targeted_attack, (('n_target_classes', 3),)),
])
def test_apgd_stays_in_ball_and_box_and_eps_zero_is_identity(untrained, attack, kw):
  params, x, y = untrained
  run = functools.partial(jitted(attack, **dict(kw)), params, x, y, jax.random.key(6))
  delta = run(EPS)
  assert float(jnp.abs(delta).max()) <= EPS + 1e-6
  assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
  assert float(jnp.abs(run(0.0)).max()) == 0.0
  with pytest.raises(ValueError, match='eps'):
    attack(mlp_apply, params, {}, x, y, jax.random.key(6), eps=-0.1)


def test_apgd_targeted_tries_each_target_on_the_robust_points(untrained):
  params, x, y = untrained
  run = lambda n: jitted(apgd_targeted_attack, n_target_classes=n)(params, x, y,
                                                                    jax.random.key(7), 0.05)
  # The first target's run is shared; later targets only add broken points.
  wrong = lambda d: np.asarray(mlp_apply(params, {}, x + d, False)[0].argmax(-1) != y)
  one, three = wrong(run(1)), wrong(run(3))
  assert np.all(three >= one) and three.sum() > one.sum()
  with pytest.raises(ValueError, match='n_target_classes'):
    apgd_targeted_attack(mlp_apply, params, {}, x, y, jax.random.key(7), eps=0.05,
                         n_target_classes=10)


def wiggly_apply(params, state, x, train):
  """A linear model plus a tiny, fast-oscillating term: with input noise its single-draw
  gradient is mostly noise while its logits barely move."""
  flat = x.reshape(len(x), -1)
  return flat @ params['w'] + 0.01 * jnp.sin(1000.0 * flat) @ params['v'], state, {}


@functools.lru_cache
def noisy_problem():
  """f(x + r), r ~ U(±0.05), of `wiggly_apply`; labels of the noise-free linear part."""
  x, _ = toy_data(jax.random.key(8), 40, classes=5, shape=(8,), noise=0.03)
  k1, k2 = jax.random.split(jax.random.key(9))
  params = {'w': jax.random.normal(k1, (8, 5)), 'v': jax.random.normal(k2, (8, 5))}
  return with_input_noise(wiggly_apply, 0.05), params, x, (x @ params['w']).argmax(-1)


def test_eot_lowers_accuracy_compared_with_a_single_draw_attack():
  noisy, params, x, y = noisy_problem()
  kw = dict(suite='custom', attacks=['apgd-ce'], eps=0.1, randomized=True, apgd_steps=10,
            checks=False, progress=False)
  single = evaluate(noisy, params, {}, x, y, eot_samples=1, **kw)
  eot = evaluate(noisy, params, {}, x, y, eot_samples=20, **kw)
  assert single['clean_accuracy'] > 0.85 and single['n_draws'] == 100
  assert eot['robust_accuracy'] < single['robust_accuracy'] - 0.08
  assert eot['robust_accuracy_ci95'][1] < single['robust_accuracy_ci95'][0]
