"""FAB-T: the L∞ hyperplane projection, the boundary distance of a linear model, validity."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

from fat_jax.attacks import fab_attack, fab_targeted_attack
from fat_jax.attacks.fab import project_hyperplane_linf
from tests.test_apgd import EPS, mlp_apply, untrained  # noqa: F401  (fixture)


def linprog_projection(p, w, b):
  """min ‖d‖∞ s.t. w·(p + d) = b, 0 ≤ p + d ≤ 1, as a linear program; None if infeasible."""
  dim = len(p)
  a_ub = np.block([[np.eye(dim), -np.ones((dim, 1))], [-np.eye(dim), -np.ones((dim, 1))]])
  res = linprog(np.r_[np.zeros(dim), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * dim),
                A_eq=np.r_[w, 0.0][None], b_eq=[b - w @ p],
                bounds=[(-v, 1 - v) for v in p] + [(0, None)])
  return res.x[-1] if res.status == 0 else None


def test_projection_matches_linear_programming():
  rng = np.random.default_rng(0)
  rows = []
  for _ in range(60):
    dim = int(rng.integers(2, 9))
    p = rng.uniform(0, 1, dim)
    p[rng.uniform(size=dim) < 0.2] = rng.integers(0, 2)     # some on the box faces
    w = rng.normal(size=dim) * (rng.uniform(size=dim) > 0.15)  # some zero weights
    b = w @ rng.uniform(0, 1, dim) * rng.uniform(0.5, 2.0)    # some planes out of reach
    rows.append((p, w, b))
  pad = lambda a: np.pad(a, (0, 8 - len(a)))  # zero-weight padding changes nothing
  d = np.asarray(project_hyperplane_linf(jnp.asarray([pad(p) for p, _, _ in rows], jnp.float32),
                                         jnp.asarray([pad(w) for _, w, _ in rows], jnp.float32),
                                         jnp.asarray([b for _, _, b in rows], jnp.float32)))
  infeasible = 0
  for (p, w, b), step in zip(rows, d):
    step = step[:len(p)]
    best = linprog_projection(p, w, b)
    if best is None:   # out of reach: the step to the box corner that moves w·u towards b
      infeasible += 1
      toward = np.sign(b - w @ p) * w
      np.testing.assert_allclose(step, np.where(toward > 0, 1 - p, -p) * (w != 0), atol=1e-6)
    else:
      assert abs(np.abs(step).max() - best) < 1e-5
      assert abs(w @ (p + step) - b) < 1e-4
      assert (p + step).min() > -1e-6 and (p + step).max() < 1 + 1e-6
  assert 0 < infeasible < len(rows)


def linear_apply(params, state, x, train):
  return x.reshape(len(x), -1) @ params['w'] + params['b'], state, {}


def test_fab_finds_the_boundary_of_a_linear_model():
  """Two classes, box not binding: the closest adversarial point lies at
  ‖δ‖∞ = |z_t − z_y| / ‖w_t − w_y‖₁; FAB overshoots it by at most η = 1.05."""
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {'w': jax.random.normal(k1, (12, 2)) * 3, 'b': jnp.zeros(2)}
  x = 0.5 + 0.01 * jax.random.normal(k2, (8, 12))
  z = linear_apply(params, {}, x, False)[0]
  y = z.argmax(-1)
  w = params['w']
  dist = np.asarray(jnp.abs(z[:, 0] - z[:, 1]) / jnp.abs(w[:, 0] - w[:, 1]).sum())
  assert dist.max() < 0.3      # the box does not bind
  run = jax.jit(lambda eps: fab_attack(linear_apply, params, {}, x, y, jax.random.key(1), eps=eps,
                                       target=1 - y, steps=20).delta)
  found = np.abs(np.asarray(run(1.0))).max(axis=1)
  assert np.all(found >= dist * (1 - 1e-4)) and np.all(found <= 1.05 * dist + 1e-6)
  assert float(jnp.abs(run(0.9 * float(dist.min()))).max()) == 0.0   # nothing within ε


@functools.lru_cache
def fab_targeted_jit():
  return jax.jit(lambda params, x, y, eps: fab_targeted_attack(
      mlp_apply, params, {}, x, y, jax.random.key(2), eps=eps, n_target_classes=3, steps=10).delta)


def test_fab_targeted_stays_in_ball_and_box_and_eps_zero_is_identity(untrained):  # noqa: F811
  params, x, y = untrained
  delta = fab_targeted_jit()(params, x, y, EPS)
  assert float(jnp.abs(delta).max()) <= EPS + 1e-6
  assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
  broken = np.asarray(jnp.abs(delta).reshape(len(x), -1).max(1) > 0)
  wrong = np.asarray(mlp_apply(params, {}, x + delta, False)[0].argmax(-1) != y)
  assert broken.any() and np.all(wrong[broken])   # a returned δ is an adversarial example
  assert float(jnp.abs(fab_targeted_jit()(params, x, y, 0.0)).max()) == 0.0
  with pytest.raises(ValueError, match='eps'):
    fab_targeted_attack(mlp_apply, params, {}, x, y, jax.random.key(2), eps=-1.0)


def reference_fab_targeted(params, x, y, target, steps, alpha_max=0.1, eta=1.05, beta=0.9):
  """A transcription of fab_base.py's attack_single_run (targeted, L∞, no random start) with
  Python loops and numpy masks; the projection is `project_hyperplane_linf` (tested above)."""
  n = len(x)
  x0 = np.asarray(x).reshape(n, -1)
  x1, adv, res = x0.copy(), x0.copy(), np.full(n, 1e10)
  logits_of = lambda v: mlp_apply(params, {}, jnp.asarray(v).reshape(x.shape), False)[0]
  rows = np.arange(n)
  diff = lambda v: (logits_of(v)[rows, target] - logits_of(v)[rows, y]).sum()
  for _ in range(steps):
    z = np.asarray(logits_of(x1))
    df = z[rows, target] - z[rows, y]
    dg = np.asarray(jax.grad(diff)(jnp.asarray(x1)))
    b = -df + (dg * x1).sum(1)
    d3 = np.asarray(project_hyperplane_linf(jnp.asarray(np.r_[x1, x0]), jnp.asarray(np.r_[dg, dg]),
                                            jnp.asarray(np.r_[b, b])))
    d1, d2 = d3[:n], d3[n:]
    a0 = np.maximum(np.abs(d3).max(1, keepdims=True), 1e-8)
    alpha = np.clip(a0[:n] / (a0[:n] + a0[n:]), 0, alpha_max)
    x1 = np.clip((x1 + eta * d1) * (1 - alpha) + (x0 + d2 * eta) * alpha, 0, 1)
    is_adv = np.asarray(logits_of(x1).argmax(-1)) != np.asarray(y)
    if is_adv.any():
      t = np.abs(x1[is_adv] - x0[is_adv]).max(1)
      closer = t < res[is_adv]
      idx = np.flatnonzero(is_adv)[closer]
      adv[idx], res[idx] = x1[idx], t[closer]
      x1[is_adv] = x0[is_adv] + (x1[is_adv] - x0[is_adv]) * beta
  return adv - x0, res


def test_fab_matches_a_transcription_of_the_reference(untrained):  # noqa: F811
  params, x, y = untrained
  target = (y + 4) % 10
  ours = np.asarray(fab_attack(mlp_apply, params, {}, x, y, jax.random.key(0), eps=1.0,
                               target=target, steps=10).delta).reshape(len(x), -1)
  ref, dist = reference_fab_targeted(params, x, y, target, steps=10)
  clean_ok = np.asarray(mlp_apply(params, {}, x, False)[0].argmax(-1) == y)
  found = clean_ok & (dist < 1e10)
  assert found.sum() >= 5
  np.testing.assert_allclose(ours[found], ref[found], atol=2e-5)
  assert not ours[~found].any()
