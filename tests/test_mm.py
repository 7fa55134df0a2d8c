"""The Minimum-Margin attack: its loss, fidelity to a transcription of the authors' loop (APGD-T
on the MM loss, one target after another on the points still robust), the ball and the box,
and the 'mm' / 'mm+' entries and suites of `evaluate`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.attacks import mm_attack, mm_loss
from fat_jax.evaluate import evaluate
from fat_jax.evaluate.suites import SuiteOptions, attack_batch
from tests.test_apgd import (mlp_apply, reference_apgd_run, trained,  # noqa: F401
                             untrained)

EPS = 0.05


def test_mm_loss_hand_values():
  z = jnp.array([[3.0, 1.0, 0.0], [0.0, 80.0, 1.0]])
  y, t = jnp.array([0, 0]), jnp.array([1, 2])
  # −max(z_y − z_t + 50, 0): −(3 − 1 + 50) and −max(0 − 1 + 50, 0).
  np.testing.assert_allclose(mm_loss(z, y, t), [-52.0, -49.0])
  np.testing.assert_allclose(mm_loss(z, y, t, confidence=0.5), [-2.5, 0.0])


def reference_mm(params, x, y, key, *, eps, steps, k):
  """``eval_robust_mm_sequential``: for i < k, target = the (i+2)-th class by the clean logits
  (``argsort(logits − 10000·onehot(y))[:, −(i+1)]``), one APGD-T run on the points still robust.
  Points never fooled keep their highest-MM-loss point (where the reference keeps x)."""
  logits_of = lambda xa: mlp_apply(params, {}, xa, False)[0]
  x, y = np.asarray(x), np.asarray(y)
  logits = np.asarray(logits_of(x))
  robust = logits.argmax(-1) == y
  delta, best = np.zeros_like(x), np.full(len(x), -np.inf)
  runs_key = jax.random.split(key)[1]
  ranked = np.argsort(logits - 10000 * np.eye(logits.shape[1])[y], axis=1, kind='stable')
  for i in range(k):
    idx = np.flatnonzero(robust)
    # The ε-sphere start the attack draws for target i: key layout of `mm_attack`.
    start_key = jax.random.split(jax.random.fold_in(runs_key, i))[0]
    t = np.asarray(jax.random.uniform(start_key, x.shape, jnp.float32, -1.0, 1.0))
    start = eps * t / (np.abs(t).reshape(len(x), -1).max(1)[:, None, None, None] + 1e-12)
    start = (np.clip(x + start, 0, 1) - x)[idx]
    target = ranked[idx, -(i + 1)]
    loss_fn = lambda z, yy=y[idx], tt=target: mm_loss(z, jnp.asarray(yy), jnp.asarray(tt))
    d_best, loss_best, d_adv, fooled = reference_apgd_run(logits_of, x[idx], y[idx], start,
                                                          loss_fn, steps, eps)
    better = ~fooled & (loss_best > best[idx])
    delta[idx[fooled]] = d_adv[fooled]
    delta[idx[better]], best[idx[better]] = d_best[better], loss_best[better]
    robust[idx[fooled]] = False
  return delta, robust


def test_mm_matches_a_transcription_of_the_authors_loop(untrained):  # noqa: F811
  params, x, y = untrained
  key, steps, k = jax.random.key(4), 12, 3
  ours = np.asarray(mm_attack(mlp_apply, params, {}, x, y, key, eps=EPS, steps=steps,
                              n_target_classes=k).delta)
  ref, robust = reference_mm(params, x, y, key, eps=EPS, steps=steps, k=k)
  clean_ok = np.asarray(mlp_apply(params, {}, x, False)[0].argmax(-1) == y)
  # The attack breaks some points and leaves some robust after all three targets.
  assert clean_ok.sum() >= 4 and 0 < robust.sum() < clean_ok.sum()
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  assert not ours[~clean_ok].any()


def test_later_targets_only_add_broken_points(untrained):  # noqa: F811
  params, x, y = untrained
  wrong = lambda d: np.asarray(mlp_apply(params, {}, x + d, False)[0].argmax(-1) != y)
  run = lambda k: mm_attack(mlp_apply, params, {}, x, y, jax.random.key(7), eps=EPS, steps=8,
                            n_target_classes=k).delta
  one, three = wrong(run(1)), wrong(run(3))
  assert np.all(three >= one) and three.sum() > one.sum()


@pytest.mark.parametrize('norm, eps', [('Linf', EPS), ('L2', 0.5)])
def test_mm_stays_in_ball_and_box_and_eps_zero_is_identity(untrained, norm, eps):  # noqa: F811
  params, x, y = untrained
  run = jax.jit(lambda e: mm_attack(mlp_apply, params, {}, x, y, jax.random.key(6), eps=e,
                                    steps=6, norm=norm).delta)
  delta = run(eps)
  size = (jnp.abs(delta).reshape(len(x), -1).max(1) if norm == 'Linf' else
          jnp.sqrt((delta ** 2).reshape(len(x), -1).sum(1)))
  assert float(size.max()) <= eps + 1e-5
  assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
  assert float(jnp.abs(run(0.0)).max()) == 0.0
  with pytest.raises(ValueError, match='eps'):
    mm_attack(mlp_apply, params, {}, x, y, jax.random.key(6), eps=-0.1)
  with pytest.raises(ValueError, match='n_target_classes'):
    mm_attack(mlp_apply, params, {}, x, y, jax.random.key(6), eps=eps, n_target_classes=10)


def test_the_entries_are_mm3_and_mm_plus(trained):  # noqa: F811
  params, x, y = trained
  options = SuiteOptions(mm_steps=5, mm_target_classes=2, apgd_steps=7, n_target_classes=3)
  for name, steps, k in [('mm', 5, 2), ('mm+', 7, 3)]:
    delta, forward, backward = attack_batch(params, {}, x, y, jax.random.key(3), EPS, 0,
                                            apply_fn=mlp_apply, name=name, options=options)
    expected = mm_attack(mlp_apply, params, {}, x, y, jax.random.key(3), eps=EPS, steps=steps,
                         n_target_classes=k).delta
    np.testing.assert_allclose(delta, expected, atol=1e-6)   # jitted vs not: float rounding
    assert int(forward[0]) == 1 + k * (steps + 1) and int(backward[0]) == k * (steps + 1)


@pytest.mark.parametrize('suite, attacks', [('mm', None), ('custom', ['mm'])])
def test_evaluate_runs_mm_with_a_progress_bar(trained, capsys, suite, attacks):  # noqa: F811
  params, x, y = trained
  report = evaluate(mlp_apply, params, {}, x, y, eps=0.1, suite=suite, attacks=attacks,
                    mm_steps=10, batch_size=32, progress=True, square_check=False)
  assert report['attacks'] == ['mm']
  assert report['robust_accuracy'] < report['clean_accuracy']
  assert report['checks']['validity']['status'] == 'pass'
  correct_at = np.asarray(mlp_apply(params, {}, jnp.asarray(report['x_adv']), False)[0]
                          .argmax(-1) == y)
  np.testing.assert_array_equal(correct_at, report['flags']['robust'])
  assert 'mm' in capsys.readouterr().err   # the bar's label


def test_eps_zero_gives_the_clean_accuracy(trained):  # noqa: F811
  params, x, y = trained
  report = evaluate(mlp_apply, params, {}, x, y, eps=0.0, suite='mm', mm_steps=4,
                    progress=False, square_check=False)
  assert report['robust_accuracy'] == report['clean_accuracy'] > 0.9
