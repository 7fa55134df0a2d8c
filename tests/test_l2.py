"""The L2 threat model: APGD's L2 step, FAB's L2 projection and Square's L2 windows against
numpy transcriptions of `fra31/auto-attack`, validity in the L2 ball and the box, strength,
and untargeted FAB on linear models whose minimal perturbation is known."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.attacks import (apgd_attack, apgd_targeted_attack, fab_targeted_attack,
                             fab_untargeted_attack, pgd_attack, square_attack)
from fat_jax.attacks.apgd import apgd_step
from fat_jax.attacks.fab import project_hyperplane_l2, project_hyperplane_linf
from fat_jax.attacks.square import eta_pattern, square_l2_sides, square_l2_update
from fat_jax.losses import cross_entropy
from tests.test_apgd import init_mlp, mlp_apply, toy_data, trained  # noqa: F401  (fixture)


def l2(v):
  return np.sqrt((np.asarray(v, np.float64) ** 2).reshape(len(v), -1).sum(1))


def per_example(v, x):
  return np.asarray(v).reshape((-1,) + (1,) * (x.ndim - 1))


# ------------------------------------------------------------------ transcriptions (numpy)

def reference_normalize(v):
  """autopgd_base.py / square.py ``normalize`` for 'L2'."""
  return v / (per_example(l2(v), v) + 1e-12)


def reference_apgd_l2_step(x, x_adv, x_adv_old, grad, step_size, a, eps):
  """autopgd_base.py, ``attack_single_run``'s L2 gradient step, in x coordinates."""
  lp_norm = lambda v: per_example(l2(v), v)
  grad2 = x_adv - x_adv_old
  x_adv_1 = x_adv + step_size * reference_normalize(grad)
  x_adv_1 = np.clip(x + reference_normalize(x_adv_1 - x) * np.minimum(
      eps * np.ones_like(x), lp_norm(x_adv_1 - x)), 0.0, 1.0)
  x_adv_1 = x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a)
  return np.clip(x + reference_normalize(x_adv_1 - x) * np.minimum(
      eps * np.ones_like(x), lp_norm(x_adv_1 - x)), 0.0, 1.0)


def reference_projection_l2(points_to_project, w_hyperplane, b_hyperplane):
  """fab_projections.py ``projection_l2``, line by line (sort, then binary search)."""
  t, w, b = points_to_project, w_hyperplane.copy(), b_hyperplane
  c = (w * t).sum(1) - b
  ind2 = c < 0
  w[ind2] *= -1
  c[ind2] *= -1
  with np.errstate(divide='ignore', invalid='ignore'):
    r = np.clip(np.maximum(t / w, (t - 1) / w), -1e12, 1e12)
  r[np.abs(w) < 1e-8] = 1e12
  r[r == -1e12] *= -1
  indr = np.argsort(r, axis=1, kind='stable')
  rs = np.take_along_axis(r, indr, 1)
  rs2 = np.pad(rs[:, 1:], ((0, 0), (0, 1)))
  rs[rs == 1e12] = 0
  rs2[rs2 == 1e12] = 0
  w3s = np.take_along_axis(w ** 2, indr, 1)
  w5 = w3s.sum(1, keepdims=True)
  ws = w5 - np.cumsum(w3s, 1)
  d = -(r * w) * (np.abs(w) > 1e-8)
  s = np.concatenate([(-w5[:, 0] * rs[:, 0])[:, None],
                      np.cumsum((-rs2 + rs) * ws, 1) - w5 * rs[:, :1]], 1)
  c4 = s[:, 0] + c < 0
  c3 = (d * w).sum(1) + c > 0
  c2 = ~c4 & ~c3
  lb, ub = np.zeros(c2.sum()), np.full(c2.sum(), w.shape[1] - 1.0)
  s_, c_ = s[c2], c[c2]
  for _ in range(math.ceil(math.log2(w.shape[1]))):
    counter4 = np.floor((lb + ub) / 2)
    c3_ = s_[np.arange(len(s_)), counter4.astype(int)] + c_ > 0
    lb, ub = np.where(c3_, counter4, lb), np.where(c3_, ub, counter4)
  lb = lb.astype(int)
  if c4.any():
    d[c4] = -(c[c4] / w5[c4, 0])[:, None] * w[c4]
  if c2.any():
    rows = np.flatnonzero(c2)
    alpha = (s[rows, lb] + c[c2]) / ws[rows, lb] + rs[rows, lb]
    alpha[ws[rows, lb] == 0] = 0
    c5 = (alpha[:, None] > r[c2]).astype(float)
    d[c2] = d[c2] * c5 - alpha[:, None] * w[c2] * (1 - c5)
  return d * (np.abs(w) > 1e-8)


def reference_eta(s):
  """square.py ``eta_rectangles`` and ``eta`` (without the random transpose)."""
  def eta_rectangles(x, y):
    delta = np.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    counter2 = [x_c - 1, y_c - 1]
    for counter in range(0, max(x_c, y_c)):
      delta[max(counter2[0], 0):min(counter2[0] + (2 * counter + 1), x),
            max(0, counter2[1]):min(counter2[1] + (2 * counter + 1), y)] += 1.0 / (counter + 1) ** 2
      counter2[0] -= 1
      counter2[1] -= 1
    return delta / np.sqrt((delta ** 2).sum())

  delta = np.zeros([s, s])
  with np.errstate(invalid='ignore'):   # s = 1: the upper half is empty
    delta[:s // 2] = eta_rectangles(s // 2, s)
  delta[s // 2:] = -1.0 * eta_rectangles(s - s // 2, s)
  return delta / np.sqrt((delta ** 2).sum())


def reference_square_l2_step(x, x_best, eps, vh, vw, vh2, vw2, eta, signs):
  """square.py ``attack_single_run``'s L2 proposal (NCHW) for windows at (vh, vw) and
  (vh2, vw2), pattern `eta` (s, s) and signs (N, C)."""
  c, s = x.shape[1], len(eta)
  lp_norm = lambda v: per_example(l2(v), v)
  delta_curr = x_best - x
  new_deltas_mask = np.zeros_like(x)
  new_deltas_mask[:, :, vh:vh + s, vw:vw + s] = 1.0
  norms_window_1 = np.sqrt((delta_curr[:, :, vh:vh + s, vw:vw + s] ** 2).sum(
      axis=(-2, -1), keepdims=True))
  new_deltas_mask_2 = np.zeros_like(x)
  new_deltas_mask_2[:, :, vh2:vh2 + s, vw2:vw2 + s] = 1.0
  norms_image = lp_norm(x_best - x)
  mask_image = np.maximum(new_deltas_mask, new_deltas_mask_2)
  norms_windows = lp_norm(delta_curr * mask_image)
  new_deltas = np.ones([x.shape[0], c, s, s]) * (eta[None, None] * signs[:, :, None, None])
  old_deltas = delta_curr[:, :, vh:vh + s, vw:vw + s] / (1e-12 + norms_window_1)
  new_deltas += old_deltas
  new_deltas = new_deltas / (1e-12 + np.sqrt((new_deltas ** 2).sum(
      axis=(-2, -1), keepdims=True))) * np.sqrt(np.maximum(
          (eps * np.ones_like(new_deltas)) ** 2 - norms_image ** 2, 0) / c + norms_windows ** 2)
  delta_curr[:, :, vh2:vh2 + s, vw2:vw2 + s] = 0.0
  delta_curr[:, :, vh:vh + s, vw:vw + s] = new_deltas + 0
  return np.clip(x + reference_normalize(delta_curr) * eps, 0.0, 1.0)


# ------------------------------------------------------------------ step rules and projections

def test_apgd_l2_step_matches_the_reference():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (6, 4, 4, 3))
  x[:, 0] = 0.0                                         # a face of the box that can bind
  eps, step = 0.5, 2 * 0.5 * rng.uniform(0.2, 1.0, (6, 1, 1, 1))
  start = np.clip(x + eps * reference_normalize(rng.normal(size=x.shape)), 0, 1)
  old = np.clip(x + 0.8 * eps * reference_normalize(rng.normal(size=x.shape)), 0, 1)
  grad = rng.normal(size=x.shape) * rng.uniform(0.01, 100, (6, 1, 1, 1))
  for a in (1.0, 0.75):
    ref = reference_apgd_l2_step(x, start, old, grad, step, a, eps)
    ours = x + np.asarray(apgd_step(*(jnp.asarray(v, jnp.float32) for v in (
        x, start - x, old - x, grad, step)), a, eps=eps, norm='L2'))
    np.testing.assert_allclose(ours, ref, atol=2e-6)
    assert l2(ours - x).max() <= eps + 1e-5 and (l2(ref - x) < eps - 1e-3).any()  # inside too


def test_fab_l2_projection_matches_the_reference():
  rng = np.random.default_rng(1)
  rows = []
  for _ in range(80):
    dim = 12
    p = rng.uniform(0, 1, dim)
    p[rng.uniform(size=dim) < 0.2] = rng.integers(0, 2)       # some on the box faces
    w = rng.normal(size=dim) * (rng.uniform(size=dim) > 0.15)  # some zero weights
    b = w @ rng.uniform(0, 1, dim) * rng.uniform(0.3, 4.0)     # some planes out of reach
    rows.append((p, w, b))
  p, w, b = (np.array(v) for v in zip(*rows))
  ref = reference_projection_l2(p, w, b)
  ours = np.asarray(project_hyperplane_l2(*(jnp.asarray(v, jnp.float32) for v in (p, w, b))))
  np.testing.assert_allclose(ours, ref, atol=2e-5)
  # Cases hit: plain projection (no coordinate saturates), saturation, out of reach.
  reached = np.abs(((p + ref) * w).sum(1) - b) < 1e-6
  saturated = ((p + ref <= 1e-9) | (p + ref >= 1 - 1e-9)) & (w != 0) & (ref != 0)
  assert (~reached).sum() > 3 and (reached & saturated.any(1)).sum() > 3
  assert (reached & ~saturated.any(1)).sum() > 3
  assert (p + ours).min() > -1e-6 and (p + ours).max() < 1 + 1e-6


def test_fab_l2_projection_of_long_rows_matches_the_reference():
  """D = 300: the reference's binary search over the sorted breakpoints takes 9 halvings."""
  rng = np.random.default_rng(2)
  p, w = rng.uniform(0, 1, (16, 300)), rng.normal(size=(16, 300))
  b = (w * p).sum(1) + rng.normal(size=16) * np.abs(w).sum(1) * 0.3
  ref = reference_projection_l2(p, w, b)
  ours = np.asarray(project_hyperplane_l2(*(jnp.asarray(v, jnp.float32) for v in (p, w, b))))
  np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize('side', range(1, 16))
def test_square_eta_pattern_matches_the_reference(side):
  np.testing.assert_allclose(eta_pattern(side), reference_eta(side), atol=1e-6)


def test_square_l2_sides_are_odd_and_follow_the_p_schedule():
  assert square_l2_sides(0.8, 32, 32).tolist() == [29, 21, 15, 11, 7, 5, 5, 3, 3, 3]
  assert square_l2_sides(0.8, 8, 8).tolist() == [7, 5, 5, 3, 3, 3, 3, 3, 3, 3]


def test_square_l2_window_update_matches_the_reference():
  rng = np.random.default_rng(3)
  n, c, h, w, s, eps = 4, 3, 10, 9, 5, 0.7
  x = rng.uniform(0, 1, (n, c, h, w))
  x_best = np.clip(x + eps * reference_normalize(rng.normal(size=x.shape)), 0, 1)
  x_best[1] = np.clip(x[1] + 0.5 * (x_best[1] - x[1]), 0, 1)   # one point inside the ball
  eta, signs = reference_eta(s).T, rng.choice([-1.0, 1.0], (n, c))
  for vh, vw, vh2, vw2 in ((1, 2, 4, 3), (0, 0, 5, 4), (3, 4, 3, 4)):
    ref = reference_square_l2_step(x, x_best.copy(), eps, vh, vw, vh2, vw2, eta, signs)
    masks = np.zeros((2, n, h, w, 1), bool)
    masks[0, :, vh:vh + s, vw:vw + s] = True
    masks[1, :, vh2:vh2 + s, vw2:vw2 + s] = True
    placed = np.zeros((n, h, w, c))
    placed[:, vh:vh + s, vw:vw + s] = eta[None, :, :, None] * signs[:, None, None, :]
    nhwc = lambda v: jnp.asarray(np.transpose(v, (0, 2, 3, 1)), jnp.float32)
    ours = square_l2_update(nhwc(x), nhwc(x_best - x), eps, jnp.asarray(masks[0]),
                            jnp.asarray(masks[1]), jnp.asarray(placed, jnp.float32))
    np.testing.assert_allclose(np.asarray(nhwc(x) + ours), np.asarray(nhwc(ref)), atol=2e-6)


# ------------------------------------------------------------------ whole attacks

def reference_apgd_l2(params, x, y, start, loss_fn, steps, eps, rho=0.75):
  """autopgd_base.py's attack_single_run (L2) with Python loops and numpy masks."""
  logits_of = lambda v: mlp_apply(params, {}, jnp.asarray(v, jnp.float32), False)[0]

  @jax.jit
  def loss_grad_logits(v):
    return loss_fn(logits_of(v)), jax.grad(lambda v: loss_fn(logits_of(v)).sum())(v), logits_of(v)

  loss_grad = lambda v: tuple(np.array(a, np.float64) for a in loss_grad_logits(
      jnp.asarray(v, jnp.float32)))
  x = np.asarray(x, np.float64)
  n_iter_2, n_iter_min, size_decr = (max(int(f * steps), 1) for f in (0.22, 0.06, 0.03))
  x_adv = x + np.asarray(start, np.float64)
  x_best, x_best_adv = x_adv.copy(), x_adv.copy()
  loss_steps = np.zeros((steps, len(x)))
  loss, grad, logits = loss_grad(x_adv)
  acc = logits.argmax(-1) == np.asarray(y)
  loss_best, grad_best = loss.copy(), grad.copy()
  step = 2 * eps * np.ones((len(x), 1, 1, 1))
  x_adv_old, k, counter3 = x_adv.copy(), n_iter_2, 0
  loss_best_last_check, reduced_last_check = loss_best.copy(), np.ones(len(x), bool)
  for i in range(steps):
    x_adv, x_adv_old = (reference_apgd_l2_step(x, x_adv, x_adv_old, grad, step,
                                               0.75 if i > 0 else 1.0, eps), x_adv.copy())
    loss, grad, logits = loss_grad(x_adv)
    pred = logits.argmax(-1) == np.asarray(y)
    acc &= pred
    x_best_adv[~pred] = x_adv[~pred]
    loss_steps[i] = loss
    ind = loss > loss_best
    x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], loss[ind]
    counter3 += 1
    if counter3 == k:
      t = sum((loss_steps[i - c] > loss_steps[i - c - 1]).astype(float) for c in range(k))
      fl = (t <= k * rho) | (~reduced_last_check & (loss_best_last_check >= loss_best))
      reduced_last_check, loss_best_last_check = fl.copy(), loss_best.copy()
      step[fl] /= 2.0
      x_adv[fl], grad[fl] = x_best[fl], grad_best[fl]
      k, counter3 = max(k - size_decr, n_iter_min), 0
  return np.where(per_example(~acc, x), x_best_adv, x_best) - x, ~acc


@pytest.fixture(scope='module')
def images():
  """A random MLP on 8×8×3 images; labels = its predictions except for the first three."""
  x, _ = toy_data(jax.random.key(12), 16, shape=(8, 8, 3))
  params = init_mlp(jax.random.key(13), 192, scale=3.0)
  y = mlp_apply(params, {}, x, False)[0].argmax(-1)
  return params, x, y.at[:3].set((y[:3] + 1) % 10)


def test_apgd_l2_matches_a_transcription_of_the_reference(images):
  params, x, y = images
  key, steps, eps = jax.random.key(4), 30, 0.15
  ours = apgd_attack(mlp_apply, params, {}, x, y, key, eps=eps, steps=steps, norm='L2').delta
  # apgd_attack: (clean key, runs key); run 0: fold_in(runs key, 0) → (start key, draw key).
  start_key = jax.random.split(jax.random.fold_in(jax.random.split(key)[1], 0))[0]
  t = np.asarray(jax.random.normal(start_key, x.shape, x.dtype), np.float64)
  start = np.clip(np.asarray(x) + eps * reference_normalize(t), 0, 1) - np.asarray(x)
  ref, fooled = reference_apgd_l2(params, x, y, start, lambda z: cross_entropy(z, y), steps, eps)
  clean_ok = np.asarray(mlp_apply(params, {}, x, False)[0].argmax(-1) == y)
  assert clean_ok.sum() >= 10 and 0 < fooled[clean_ok].sum() < clean_ok.sum()
  # float32 (ours) against float64 (the transcription) over 30 normalised steps.
  np.testing.assert_allclose(np.asarray(ours)[clean_ok], ref[clean_ok], atol=1e-4)
  assert not np.asarray(ours)[~clean_ok].any()


def reference_fab_untargeted(params, x, y, steps, norm, alpha_max=0.1, eta=1.05, beta=0.9):
  """fab_base.py's attack_single_run (untargeted, no random start) with Python loops and numpy
  masks: ``get_diff_logits_grads_batch`` by one gradient per class, the closest linearised
  boundary, then the targeted run's update; projections `reference_projection_l2` (L2) and
  `project_hyperplane_linf` (L∞, checked against linear programming in tests/test_fab.py)."""
  n = len(x)
  x0 = np.asarray(x, np.float64).reshape(n, -1)
  x1, adv, res = x0.copy(), x0.copy(), np.full(n, 1e10)
  logits_of = lambda v: mlp_apply(params, {}, jnp.asarray(v, jnp.float32).reshape(
      (-1,) + x.shape[1:]), False)[0]
  jacobian = jax.jit(jax.vmap(jax.jacrev(lambda v: logits_of(v[None])[0])))
  rows, y = np.arange(n), np.asarray(y)
  if norm == 'L2':
    dual, size = (lambda v: np.sqrt((v ** 2).sum(-1))), l2
    project = reference_projection_l2
  else:
    dual, size = (lambda v: np.abs(v).sum(-1)), (lambda v: np.abs(v).max(1))
    project = lambda *a: np.asarray(project_hyperplane_linf(*(jnp.asarray(v, jnp.float32)
                                                                for v in a)), np.float64)
  for _ in range(steps):
    z = np.asarray(logits_of(x1), np.float64)
    g = np.asarray(jacobian(jnp.asarray(x1, jnp.float32)), np.float64)   # (N, C, D)
    df = z - z[rows, y][:, None]
    dg = g - g[rows, y][:, None]
    df[rows, y] = 1e10
    ind = (np.abs(df) / (1e-12 + dual(dg))).argmin(1)
    dg2 = dg[rows, ind]
    b = -df[rows, ind] + (dg2 * x1).sum(-1)
    d3 = project(np.r_[x1, x0], np.r_[dg2, dg2], np.r_[b, b])
    d1, d2 = d3[:n], d3[n:]
    a0 = np.maximum(size(d3)[:, None], 1e-8)
    alpha = np.clip(a0[:n] / (a0[:n] + a0[n:]), 0, alpha_max)
    x1 = np.clip((x1 + eta * d1) * (1 - alpha) + (x0 + d2 * eta) * alpha, 0, 1)
    is_adv = np.asarray(logits_of(x1).argmax(-1)) != y
    if is_adv.any():
      t = size(x1[is_adv] - x0[is_adv])
      closer = t < res[is_adv]
      idx = np.flatnonzero(is_adv)[closer]
      adv[idx], res[idx] = x1[idx], t[closer]
      x1[is_adv] = x0[is_adv] + (x1[is_adv] - x0[is_adv]) * beta
  return adv - x0, res


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_untargeted_fab_matches_a_transcription_of_the_reference(images, norm):
  params, x, y = images
  ours = np.asarray(fab_untargeted_attack(mlp_apply, params, {}, x, y, jax.random.key(0),
                                          eps=10.0, steps=10, norm=norm).delta).reshape(len(x), -1)
  ref, dist = reference_fab_untargeted(params, x, y, steps=10, norm=norm)
  clean_ok = np.asarray(mlp_apply(params, {}, x, False)[0].argmax(-1) == y)
  found = clean_ok & (dist < 1e10)
  assert found.sum() >= 10
  np.testing.assert_allclose(ours[found], ref[found], atol=1e-4)
  assert not ours[~found].any()


L2_ATTACKS = {
    'apgd-ce': lambda eps: functools.partial(apgd_attack, steps=10, restarts=2),
    'apgd-dlr': lambda eps: functools.partial(apgd_attack, steps=10, loss='dlr'),
    'apgd-t': lambda eps: functools.partial(apgd_targeted_attack, steps=10, n_target_classes=3),
    'fab-t': lambda eps: functools.partial(fab_targeted_attack, steps=10, n_target_classes=3),
    'fab': lambda eps: functools.partial(fab_untargeted_attack, steps=10, restarts=2),
    'square': lambda eps: lambda *a, **k: square_attack(*a, queries=60, **k),
    'pgd': lambda eps: functools.partial(pgd_attack, steps=10, alpha=eps / 4, restarts=2),
}


@pytest.mark.parametrize('name', sorted(L2_ATTACKS))
def test_l2_attacks_stay_in_ball_and_box_and_eps_zero_is_clean(images, name):
  params, x, y = images
  eps = 0.5
  run = jax.jit(lambda e, ee: L2_ATTACKS[name](ee)(mlp_apply, params, {}, x, y, jax.random.key(6),
                                                   eps=e, norm='L2').delta, static_argnums=1)
  delta = np.asarray(run(eps, eps))
  assert l2(delta).max() <= eps + 1e-5
  assert (x + delta).min() >= 0 and (x + delta).max() <= 1
  wrong = np.asarray(mlp_apply(params, {}, x + delta, False)[0].argmax(-1) != y)
  assert wrong[3:].any()                                  # the attack does something
  assert not np.asarray(run(0.0, eps)).any()              # ε = 0: δ = 0, clean accuracy
  with pytest.raises(ValueError, match='L2 radius'):
    L2_ATTACKS[name](eps)(mlp_apply, params, {}, x, y, jax.random.key(6), eps=-0.1, norm='L2')
  with pytest.raises(ValueError, match='norm'):
    L2_ATTACKS[name](eps)(mlp_apply, params, {}, x, y, jax.random.key(6), eps=eps, norm='L1')


def test_square_l2_rejects_images_smaller_than_five_pixels(images):
  params, x, y = images
  with pytest.raises(ValueError, match='5 × 5'):
    square_attack(mlp_apply, params, {}, x[:, :4, :4], y, jax.random.key(0), eps=0.5,
                  norm='L2')


def test_apgd_l2_is_not_weaker_than_l2_pgd_on_a_trained_model(trained):  # noqa: F811
  params, x, y = trained
  eps, key = 0.3, jax.random.key(5)
  acc = lambda d: float((mlp_apply(params, {}, x + d, False)[0].argmax(-1) == y).mean())
  pgd = acc(pgd_attack(mlp_apply, params, {}, x, y, key, eps=eps, alpha=eps / 4, steps=50,
                       norm='L2').delta)
  apgd = acc(apgd_attack(mlp_apply, params, {}, x, y, key, eps=eps, steps=50, norm='L2').delta)
  assert acc(0.0) > 0.9 and 0.1 < pgd < acc(0.0)
  assert apgd <= pgd


def linear_apply(params, state, x, train):
  return x.reshape(len(x), -1) @ params['w'] + params['b'], state, {}


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_untargeted_fab_finds_the_closest_boundary_of_a_linear_model(norm):
  """Four classes, box not binding: the closest adversarial point lies on the nearest
  pairwise boundary, at ‖δ‖_p = min_k |z_y − z_k| / ‖w_y − w_k‖_q (q dual to p) when the
  projection onto it is classified k; FAB overshoots it by at most η = 1.05."""
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {'w': jax.random.normal(k1, (12, 4)) * 3, 'b': jnp.zeros(4)}
  x = 0.5 + 0.01 * jax.random.normal(k2, (16, 12))
  z = np.asarray(linear_apply(params, {}, x, False)[0], np.float64)
  w = np.asarray(params['w'], np.float64)
  y = z.argmax(-1)
  if norm == 'Linf':   # ‖·‖_q of the columns, the unit-‖·‖_p step that raises w·u most
    dual, unit_step, size = (lambda v: np.abs(v).sum(0)), np.sign, (lambda v: np.abs(v).max(1))
  else:
    dual, unit_step, size = (lambda v: np.sqrt((v ** 2).sum(0))), (lambda v: v / dual(v)), l2
  gaps = [(z[i, y[i]] - z[i]) / np.where(np.arange(4) == y[i], np.nan, dual(w - w[:, [y[i]]]))
          for i in range(len(x))]
  dist, closest = np.nanmin(gaps, axis=1), np.nanargmin(gaps, axis=1)
  # The minimal-norm step onto the plane z_k = z_y (k the closest); tight if it is classified k.
  steps = dist[:, None] * unit_step(w[:, closest] - w[:, y]).T
  tight = (z + 1.001 * steps @ w).argmax(-1) == closest
  assert tight.sum() >= 8 and dist.max() < 0.2 * (1 if norm == 'Linf' else 3)
  run = jax.jit(lambda eps: fab_untargeted_attack(linear_apply, params, {}, x, jnp.asarray(y),
                                                  jax.random.key(1), eps=eps, steps=20,
                                                  norm=norm).delta)
  found = size(np.asarray(run(10.0)))
  assert np.all(found >= dist * (1 - 1e-4)) and np.all(found[tight] <= 1.05 * dist[tight] + 1e-6)
  assert not np.asarray(run(0.9 * float(dist.min()))).any()   # nothing within ε

