"""The Margin-Decomposition attacks (MD, MDMT) and the Probability Margin Attack (PMA): their
step sizes and objectives, fidelity to transcriptions of the authors' loops (HanxunH/MDAttack
``attacks/MD.py``; OpenTAI/taiadv ``attacks/PMA.py``), the ball and the box, and the entries and
suites of `evaluate`."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.attacks import md_attack, mdmt_attack, pma_attack, probability_margin_loss
from fat_jax.attacks.md import md_step_sizes, md_weights, mdmt_targets
from fat_jax.evaluate import evaluate
from fat_jax.evaluate.registry import SUITES
from fat_jax.evaluate.suites import SuiteOptions, attack_batch, attack_in_pieces
from tests.test_apgd import mlp_apply, trained, untrained  # noqa: F401

EPS = 0.05


def test_step_sizes_are_the_two_cosine_cycles_of_the_official_code():
  eps, n, k = 8 / 255, 50, 20
  official = [2 * eps * 0.5 * (1 + np.cos(((i - k - 1) if i > k else (i - 1)) / (n - k) * np.pi))
              for i in range(n)]
  np.testing.assert_allclose(eps * md_step_sizes(n, k), official, rtol=1e-12)
  table = md_step_sizes(n, k)
  assert table[1] == table[k + 1] == 2.0   # each cycle starts at 2ε
  np.testing.assert_allclose(table[[0, k, n - 1]], 1 + np.cos(np.array([-1, k - 1, 28]) / 30
                                                              * np.pi))


def test_objective_weights_per_stage():
  # (a, b) of a·z_y + b·z_o: step 0 raises z_y; before K pass 0 lowers z_y, pass 1 raises z_o;
  # from K on, the margin z_o − z_y.
  got = [[tuple(float(w) for w in md_weights(jnp.int32(i), jnp.int32(r), 3)) for i in (0, 1, 2, 3)]
         for r in (0, 1)]
  assert got == [[(1, 0), (-1, 0), (-1, 0), (-1, 1)], [(1, 0), (0, 1), (0, 1), (-1, 1)]]


def test_mdmt_targets_follow_the_official_sort_index():
  z = jnp.array([[0.0, 3.0, 1.0, 2.0, 9.0, 4.0, 8.0, 5.0, 7.0, 6.0, -1.0, 10.0]])
  ascending = np.argsort(np.asarray(z), axis=1)
  expected = [ascending[0, -t] for t in range(9, -1, -1)]   # t = 9, …, 0 as in MDMTAttack
  np.testing.assert_array_equal(mdmt_targets(z)[0], expected)
  small = mdmt_targets(jnp.array([[0.0, 3.0, 1.0, 2.0]]))   # C = 4: t = 3, …, 0
  np.testing.assert_array_equal(small[0], [2, 3, 1, 0])


def test_probability_margin_loss_hand_values():
  z = jnp.log(jnp.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
  np.testing.assert_allclose(probability_margin_loss(z, jnp.array([0, 0])), [-0.2, 0.5],
                             atol=1e-6)


@functools.partial(jax.jit, static_argnames=('probabilities',))
def official_gradient(params, xa, y, mask, i, r, change_point, *, probabilities):
  """∇ of the loss the official loop backpropagates at step i of pass r, and the scores:
  MD's and MDMT's (z_o = max(mask·z − (1 − mask)·1e8), mask the one-hot target or, for MD, all
  but y; z_y likewise) or PMA's (softmax p; p_max by the argmax of p − 9999·onehot(y))."""
  def loss(xa):
    s = mlp_apply(params, {}, xa, False)[0]
    y_gt = jax.nn.one_hot(y, s.shape[1])
    if probabilities:
      s = jax.nn.softmax(s, axis=-1)
      z_o = jnp.take_along_axis(s, (s - y_gt * 9999).argmax(1)[:, None], axis=1)[:, 0]
      z_y = jnp.take_along_axis(s, y[:, None], axis=1)[:, 0]
    else:
      z_o = jnp.max(mask * s - (1 - mask) * 1e8, axis=1)
      z_y = jnp.max(s * y_gt - (1 - y_gt) * 1e8, axis=1)
    per = jnp.where(i < 1, z_y, jnp.where(i < change_point, jnp.where(r == 1, z_o, -z_y),
                                          z_o - z_y))
    return jnp.mean(per), s
  return jax.grad(loss, has_aux=True)(xa)


def official_step(x_pgd, x, grad, i, *, eps, steps, change_point):
  """The official step size, sign step and projections (float64 α, float32 arrays)."""
  shift = change_point + 1 if i > change_point else 1
  alpha = 2.0 * eps * 0.5 * (1 + np.cos((i - shift) / (steps - change_point) * np.pi))
  x_pgd = x_pgd + np.float32(alpha) * np.sign(np.asarray(grad))
  return np.clip(np.minimum(np.maximum(x_pgd, x - eps), x + eps), 0, 1)


def reference_md(params, x, y, key, *, eps, steps, change_point, restarts, multi_target):
  """``MDAttack.perturb`` / ``MDMTAttack.perturb`` line by line (use_odi=False): the losses
  as written there (means over the batch, the 1e8-masked maxima), X_adv updated by
  ``adv_check_and_update`` at every iterate and after the last step. Two changes: the start
  is clipped to [0, 1], and the draws are those of the attack (``fold_in(key, j)``, pass j)."""
  logits_of = lambda xa: mlp_apply(params, {}, xa, False)[0]
  x, y = np.asarray(x), np.asarray(y)
  nat_logits = np.asarray(logits_of(x))
  classes = nat_logits.shape[1]
  x_adv = x.copy()
  if multi_target:
    ranked = np.argsort(nat_logits, axis=1, kind='stable')
    masks = [np.eye(classes, dtype=np.float32)[ranked[:, -t]]
             for t in range(min(9, classes - 1), -1, -1)]
  else:
    masks = [1 - np.eye(classes, dtype=np.float32)[y]]   # logits·(1 − y_gt) − y_gt·1e8
  j = 0
  for mask in masks:
    for _ in range(restarts):
      for r in range(2):
        noise = np.asarray(jax.random.uniform(jax.random.fold_in(key, j), x.shape, jnp.float32,
                                              -eps, eps))
        j += 1
        x_pgd = np.clip(x + noise, 0, 1)
        for i in range(steps):
          grad, logits = official_gradient(params, x_pgd, y, mask, i, r, change_point,
                                           probabilities=False)
          fooled = np.asarray(logits).argmax(1) != y
          x_adv[fooled] = x_pgd[fooled]
          x_pgd = official_step(x_pgd, x, grad, i, eps=eps, steps=steps,
                                change_point=change_point)
        fooled = np.asarray(logits_of(x_pgd)).argmax(1) != y
        x_adv[fooled] = x_pgd[fooled]
  return x_adv - x


def reference_pma(params, x, y, key, *, eps, steps, restarts):
  """``MDAttack.perturb`` of taiadv's ``PMA.py`` with ``loss_fn='pm'`` line by line: the
  still-robust examples as index sets (``accs``, ``cor_indexs``), softmax scores, an example
  dropped at its first misclassified iterate. The same two changes as `reference_md`; and the
  loop runs on while one robust example is left (the official loop returns early then)."""
  logits_of = lambda xa: mlp_apply(params, {}, xa, False)[0]
  x, y = np.asarray(x), np.asarray(y)
  change_point = steps / 2
  x_adv = x.copy()
  accs = np.asarray(logits_of(x)).argmax(1) == y
  j = 0
  for _ in range(restarts):
    for r in range(2):
      noise = np.asarray(jax.random.uniform(jax.random.fold_in(key, j), x.shape, jnp.float32,
                                            -eps, eps))
      j += 1
      if not accs.any():
        return x_adv - x
      x_adv[accs] = np.clip(x[accs] + noise[accs], 0, 1)
      cor = np.flatnonzero(accs)
      x_pgd, yy = x_adv[cor].copy(), y[cor]
      for i in range(steps):
        grad, p = official_gradient(params, x_pgd, yy, None, i, r, change_point,
                                    probabilities=True)
        acc = np.asarray(p).argmax(1) == yy
        accs[cor] = acc
        x_adv[cor] = x_pgd
        x_pgd = official_step(x_pgd, x[cor], grad, i, eps=eps, steps=steps,
                              change_point=change_point)
        x_pgd = x_pgd[acc]
        cor = np.flatnonzero(accs)
        yy = y[cor]
        if len(cor) == 0:
          return x_adv - x
        x_adv[cor] = x_pgd
      acc = np.asarray(logits_of(x_pgd)).argmax(1) == yy
      accs[cor] = acc
      x_adv[cor] = x_pgd
  return x_adv - x


def _fooled(params, x, y, delta):
  return np.asarray(mlp_apply(params, {}, x + delta, False)[0].argmax(-1) != y)


@pytest.mark.parametrize('attack, multi_target', [(md_attack, False), (mdmt_attack, True)])
def test_md_and_mdmt_match_a_transcription_of_the_official_loop(untrained, attack,  # noqa: F811
                                                                multi_target):
  params, x, y = untrained
  key, steps, change_point = jax.random.key(5), 8, 3
  ours = np.asarray(attack(mlp_apply, params, {}, x, y, key, eps=EPS, steps=steps,
                           change_point=change_point).delta)
  ref = reference_md(params, x, y, key, eps=EPS, steps=steps, change_point=change_point,
                     restarts=1, multi_target=multi_target)
  fooled = _fooled(params, x, y, ref)
  assert 3 < fooled.sum() < len(x)   # some points broken, some left robust
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_pma_matches_a_transcription_of_the_official_loop(untrained):  # noqa: F811
  params, x, y = untrained
  key, steps = jax.random.key(8), 10
  ours = np.asarray(pma_attack(mlp_apply, params, {}, x, y, key, eps=EPS, steps=steps).delta)
  ref = reference_pma(params, x, y, key, eps=EPS, steps=steps, restarts=1)
  fooled = _fooled(params, x, y, ref)
  assert 3 < fooled.sum() < len(x)
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  assert not ours[:3].any()   # misclassified at x: not attacked


@pytest.mark.parametrize('attack, settings', [(md_attack, dict(change_point=2)),
                                             (mdmt_attack, dict(change_point=2)),
                                             (pma_attack, {})])
def test_stays_in_ball_and_box_and_eps_zero_is_identity(untrained, attack,  # noqa: F811
                                                        settings):
  params, x, y = untrained
  run = jax.jit(lambda e: attack(mlp_apply, params, {}, x, y, jax.random.key(6), eps=e,
                                 steps=6, **settings).delta)
  delta = run(EPS)
  assert float(jnp.abs(delta).max()) <= EPS + 1e-6
  assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
  assert float(jnp.abs(run(0.0)).max()) == 0.0
  with pytest.raises(ValueError, match='radius'):
    attack(mlp_apply, params, {}, x, y, jax.random.key(6), eps=-0.1)
  with pytest.raises(ValueError, match='restarts'):
    attack(mlp_apply, params, {}, x, y, jax.random.key(6), eps=EPS, restarts=0)


def test_change_point_must_be_inside_the_steps(untrained):  # noqa: F811
  params, x, y = untrained
  with pytest.raises(ValueError, match='change_point'):
    md_attack(mlp_apply, params, {}, x, y, jax.random.key(6), eps=EPS, steps=10, change_point=10)


def test_entries_run_the_attacks_with_their_settings_and_counts(trained):  # noqa: F811
  params, x, y = trained
  options = SuiteOptions(md_steps=5, md_change_point=2, pma_steps=6, pma_restarts=1)
  key = jax.random.key(3)
  run = lambda name: attack_batch(params, {}, x, y, key, EPS, 0, apply_fn=mlp_apply, name=name,
                                  options=options)
  delta, fwd, bwd = run('md')
  expected = md_attack(mlp_apply, params, {}, x, y, key, eps=EPS, steps=5, change_point=2)
  np.testing.assert_allclose(delta, expected.delta, atol=1e-6)   # jitted vs not
  assert int(fwd[0]) == 2 * 6 and int(bwd[0]) == 2 * 5
  _, fwd, bwd = run('mdmt')   # 10 targets, the clean forward
  assert int(fwd[0]) == 1 + 10 * 2 * 6 and int(bwd[0]) == 10 * 2 * 5
  _, fwd, bwd = run('pma')    # stops once every point is fooled
  backwards = int(bwd[0])
  passes_run = -(-backwards // 6)   # each pass: its steps' forwards and one after the last
  assert 1 <= backwards <= 2 * 6 and int(fwd[0]) == 1 + backwards + passes_run


@pytest.mark.parametrize('name, pieces', [('mdmt', 10), ('pma', 2)])
def test_pieces_give_the_one_call_result(trained, name, pieces):  # noqa: F811
  params, x, y = trained
  settings = dict(apply_fn=mlp_apply, name=name,
                  options=SuiteOptions(md_steps=4, md_change_point=1, pma_steps=4,
                                               pma_restarts=1))
  batch = (params, {}, x, y, jax.random.key(2), EPS, 0)
  done = []
  in_pieces = attack_in_pieces(*batch, **settings, on_piece=done.append)
  for one, piece in zip(attack_batch(*batch, **settings), in_pieces):
    np.testing.assert_array_equal(one, piece)   # bit for bit
  assert len(done) == pieces and done[-1] == 1.0   # one per target (MDMT) or pass


def test_the_suites_are_the_authors_ensembles():
  assert SUITES['mde'] == ('apgd-ce', 'md', 'mdmt', 'fab-t')   # attack_handler.py, 'MDE'
  assert SUITES['pma+'] == ('pma', 'apgd-t')                   # attack_handler.py, 'PMA+'
  assert SUITES['md'] == ('md',) and SUITES['mdmt+'] == ('mdmt+',)


@pytest.mark.parametrize('suite, attacks', [('md', None), ('custom', ['mdmt', 'pma'])])
def test_evaluate_runs_them_with_a_progress_bar(trained, capsys, suite, attacks):  # noqa: F811
  params, x, y = trained
  report = evaluate(mlp_apply, params, {}, x, y, eps=0.1, suite=suite, attacks=attacks,
                    md_steps=6, md_change_point=2, pma_steps=6, progress=True,
                    square_check=False)
  names = attacks or ['md']
  assert report['attacks'] == names
  assert report['robust_accuracy'] < report['clean_accuracy']
  assert report['checks']['validity']['status'] == 'pass'
  correct_at = np.asarray(mlp_apply(params, {}, jnp.asarray(report['x_adv']), False)[0]
                          .argmax(-1) == y)
  np.testing.assert_array_equal(correct_at, report['flags']['robust'])
  err = capsys.readouterr().err
  assert all(name in err for name in names)   # the bars' labels


def test_l2_is_refused(trained):  # noqa: F811
  params, x, y = trained
  with pytest.raises(ValueError, match='L∞ attacks'):
    evaluate(mlp_apply, params, {}, x, y, eps=0.5, norm='L2', suite='md', progress=False)


@pytest.mark.slow
@pytest.mark.parametrize('suite', ['mde', 'pma+'])
def test_evaluate_runs_the_ensembles(trained, suite):  # noqa: F811
  params, x, y = trained
  report = evaluate(mlp_apply, params, {}, x, y, eps=0.1, suite=suite, md_steps=8,
                    md_change_point=3, pma_steps=8, apgd_steps=8, fab_steps=8, progress=False,
                    square_check=False)
  assert report['attacks'] == list(SUITES[suite])
  assert report['robust_accuracy'] < report['clean_accuracy']
