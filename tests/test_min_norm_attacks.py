"""DeepFool and C&W-L2 on affine classifiers, where the minimal perturbation is known in closed
form: the distance from x to {z_k ≥ z_y} is min_{k≠y} |f_k|/‖w_k‖ with f_k = z_k − z_y,
w_k = ∇f_k (‖·‖₂ for L2; the dual norm ‖·‖₁ for L∞); and MI-FGSM's invariants."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.attacks import cw_l2_attack, deepfool_attack, mifgsm_attack, pgd_attack

OVERSHOOT = 0.02
D = 12


def affine_apply(params, state, x, train):
  logits = x.reshape(len(x), -1) @ params['w'] + params['b']
  return logits, state, {}


def affine_problem(classes: int, seed: int = 0):
  """Points near the middle of the box, close enough to a boundary that the minimal
  perturbation stays inside [0, 1]; labels = the clean predictions."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(D, classes))
  b = -0.5 * w.sum(axis=0) + 0.01 * rng.normal(size=classes)  # boundaries through the middle
  params = {'w': jnp.asarray(w, jnp.float32), 'b': jnp.asarray(b, jnp.float32)}
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(16, D)), jnp.float32)
  y = affine_apply(params, None, x, False)[0].argmax(-1)
  return params, x, y


def closed_form_distance(params, x, y, dual: int):
  """min_{k≠y} |f_k| / ‖w_k − w_y‖_dual per example."""
  w, b = np.asarray(params['w']), np.asarray(params['b'])
  z = np.asarray(x) @ w + b
  yy = np.asarray(y)
  dist = np.full(len(yy), np.inf)
  for i, label in enumerate(yy):
    for k in range(w.shape[1]):
      if k != label:
        dist[i] = min(dist[i], abs(z[i, k] - z[i, label])
                      / np.linalg.norm(w[:, k] - w[:, label], ord=dual))
  return dist


def norm_of(delta, order):
  return np.linalg.norm(np.asarray(delta).reshape(len(delta), -1), ord=order, axis=1)


@pytest.mark.parametrize('classes', [2, 5])
@pytest.mark.parametrize('norm,order,dual', [('l2', 2, 2), ('linf', np.inf, 1)])
def test_deepfool_finds_the_closed_form_minimal_perturbation(classes, norm, order, dual):
  params, x, y = affine_problem(classes)
  out = deepfool_attack(affine_apply, params, None, x, y, norm=norm, overshoot=OVERSHOOT)
  x_adv = x + out.delta
  assert float(x_adv.min()) > 0 and float(x_adv.max()) < 1  # the box did not bind
  assert bool(jnp.all(affine_apply(params, None, x_adv, False)[0].argmax(-1) != y))
  exact = closed_form_distance(params, x, y, dual)
  found = norm_of(out.delta, order)
  # One linearisation step is exact for an affine model: (1 + overshoot)(d + 10⁻⁴).
  np.testing.assert_allclose(found, (1 + OVERSHOOT) * (exact + 1e-4), rtol=1e-4)
  assert int(out.steps.max()) == 1


def test_deepfool_leaves_misclassified_points_and_rejects_unknown_norms():
  params, x, y = affine_problem(3)
  wrong = (y + 1) % 3
  out = deepfool_attack(affine_apply, params, None, x, wrong)
  assert float(jnp.abs(out.delta).max()) == 0.0
  with pytest.raises(ValueError, match='norm'):
    deepfool_attack(affine_apply, params, None, x, y, norm='l1')


def nearest_is_runner_up(params, x, y):
  """Whether the nearest L2 boundary belongs to the most likely wrong class at x."""
  w, z = np.asarray(params['w']), np.asarray(affine_apply(params, None, x, False)[0])
  out = []
  for i, label in enumerate(np.asarray(y)):
    others = [k for k in range(w.shape[1]) if k != label]
    dist = [abs(z[i, k] - z[i, label]) / np.linalg.norm(w[:, k] - w[:, label]) for k in others]
    out.append(others[int(np.argmin(dist))] == others[int(np.argmax(z[i, others]))])
  return np.array(out)


@pytest.mark.parametrize('classes', [2, 5])
def test_cw_l2_is_no_larger_than_deepfool(classes):
  params, x, y = affine_problem(classes)
  cw = cw_l2_attack(affine_apply, params, None, x, y, max_iterations=1000)
  deepfool = deepfool_attack(affine_apply, params, None, x, y, norm='l2', overshoot=OVERSHOOT)
  exact = closed_form_distance(params, x, y, 2)
  found = norm_of(cw.delta, 2)
  np.testing.assert_allclose(np.sqrt(cw.l2_squared), found, rtol=1e-3, atol=1e-5)
  assert bool(jnp.all(affine_apply(params, None, x + cw.delta, False)[0].argmax(-1) != y))
  assert np.all(found >= exact * (1 - 1e-3))  # nothing beats the optimum
  # C&W's hinge pushes towards the most likely wrong class, so with more than two classes it
  # can end on a farther boundary than the nearest one; and one Adam step (lr 0.01 in tanh
  # space) moves x' by up to ≈ 0.005·√D ≈ 0.017 in L2, its resolution. Where neither applies
  # it lands within 0.1% of DeepFool's (1 + overshoot)-scaled optimum or below.
  comparable = nearest_is_runner_up(params, x, y) & (exact > 0.05)
  print(f'\n{classes} classes, d, C&W/d, DeepFool/d, comparable:\n'
        + np.array2string(np.c_[exact, found / exact, norm_of(deepfool.delta, 2) / exact,
                                comparable], precision=5, suppress_small=True))
  assert comparable.sum() >= 6
  assert np.all(found[comparable] <= norm_of(deepfool.delta, 2)[comparable] * (1 + 1e-3))


def test_cw_l2_without_success_returns_the_clean_point():
  params, x, y = affine_problem(2)
  out = cw_l2_attack(affine_apply, params, None, x, y, max_iterations=2, binary_search_steps=1)
  assert float(jnp.abs(out.delta).max()) == 0.0
  assert np.all(np.asarray(out.l2_squared) == 1e10)


def mlp_apply(params, state, x, train):
  h = jnp.tanh(x.reshape(len(x), -1) @ params['w1'])
  new_state = {'count': state['count'] + 1} if train else state
  return h @ params['w2'], new_state, {}


@pytest.fixture(scope='module')
def mlp():
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = {'w1': jax.random.normal(k1, (4 * 4 * 3, 32)) * 0.5,
            'w2': jax.random.normal(k2, (32, 5))}
  x = jax.random.uniform(k3, (8, 4, 4, 3))
  x = x.at[:2].set(jnp.round(x[:2]))  # pixels on the box boundary
  return params, {'count': jnp.zeros(())}, x, jax.random.randint(k4, (8,), 0, 5)


def test_mifgsm_stays_in_ball_and_box_and_threads_the_state(mlp):
  params, state, x, y = mlp
  eps = 8 / 255
  out = mifgsm_attack(mlp_apply, params, state, x, y, eps=eps, train=True)
  assert float(jnp.abs(out.delta).max()) <= eps + 1e-6
  assert float((x + out.delta).min()) >= 0 and float((x + out.delta).max()) <= 1
  assert int(out.state['count']) == 10


def test_mifgsm_without_momentum_is_iterated_fgsm(mlp):
  params, state, x, y = mlp
  eps = 8 / 255
  mi = mifgsm_attack(mlp_apply, params, state, x, y, eps=eps, momentum=0.0)
  ifgsm = pgd_attack(mlp_apply, params, state, x, y, jax.random.key(0), eps=eps, alpha=eps / 10,
                     steps=10, init='zero', freeze_misclassified=False)
  np.testing.assert_array_equal(mi.delta, ifgsm.delta)
  with_momentum = mifgsm_attack(mlp_apply, params, state, x, y, eps=eps, alpha=eps / 4)
  without = mifgsm_attack(mlp_apply, params, state, x, y, eps=eps, alpha=eps / 4, momentum=0.0)
  assert float(jnp.abs(with_momentum.delta - without.delta).max()) > 0  # μ changes the path


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_deepfool_on_images_fools_a_nonlinear_model_and_jits(mlp, norm):
  params, state, x, y = mlp
  y = mlp_apply(params, state, x, False)[0].argmax(-1)  # attack correctly classified points
  attack = functools.partial(deepfool_attack, mlp_apply, norm=norm, train=True)
  eager = attack(params, state, x, y)
  jitted = jax.jit(attack)(params, state, x, y)
  np.testing.assert_allclose(jitted.delta, eager.delta, atol=1e-6)
  fooled = mlp_apply(params, state, x + eager.delta, False)[0].argmax(-1) != y
  assert bool(fooled.all())
  assert int(eager.state['count']) == int(eager.steps.max()) + 1  # one forward per iteration


def test_cw_and_mifgsm_jit(mlp):
  params, state, x, y = mlp
  cw = functools.partial(cw_l2_attack, mlp_apply, max_iterations=20, binary_search_steps=2)
  np.testing.assert_allclose(jax.jit(cw)(params, state, x, y).delta,
                             cw(params, state, x, y).delta, atol=1e-6)
  mi = functools.partial(mifgsm_attack, mlp_apply, eps=8 / 255)
  np.testing.assert_allclose(jax.jit(mi)(params, state, x, y).delta,
                             mi(params, state, x, y).delta, atol=1e-7)
