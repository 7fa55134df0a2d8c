"""The sanity checks of one evaluation: the extra attacks and probes they need, judged by the
pure verdicts of `fat_jax.evaluate.sanity`.

`run` is the evaluation's `fat_jax.evaluate.suites` run (model, data, settings,
`score`, `attack`, `padded_batch`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks.eot import InputNoise, freeze_noise, randomized_gradient
from fat_jax.evaluate import sanity
from fat_jax.evaluate import binarization
from fat_jax.evaluate.classifier import Classifier
from fat_jax.evaluate.pieces import pad_rows
from fat_jax.evaluate.registry import square_fits
from fat_jax.losses import cross_entropy
from fat_jax.parallel import to_host

SWEEP_FRACTIONS = (0.0, 0.5, 1.0, 2.0)  # × ε, then (L∞ only) ε = 1
EOT_CHECK_SAMPLES = 100  # K of the EOT check (docs/evaluation.md: the eot_samples check)
OPTIONAL_CHECKS = ('binarization',)   # run when named in evaluate(checks=(...))


@dataclasses.dataclass(frozen=True)
class _OneDraw:
  """`freeze_noise` with the draw's key carried in the parameters, ``(params, key)``: the
  attacks compile once per randomised model, not once per draw."""
  random_apply_fn: Callable

  def __call__(self, params_and_key, state, x, train):
    params, key = params_and_key
    return freeze_noise(self.random_apply_fn, key)(params, state, x, train)


@functools.partial(jax.jit, static_argnames=('apply_fn', 'randomized'))
def probe_batch(params, state, x, y, key, *, apply_fn, randomized: bool = False):
  """Clean logits (one draw) and whether the CE input gradient is exactly zero, per example."""
  g = randomized_gradient(apply_fn, params, state, x, lambda z: cross_entropy(z, y), key,
                          randomized=randomized)
  return g.logits, jnp.all(g.grad.reshape(len(x), -1) == 0, axis=1)


def _probe(run, x, key):
  """The logits (one draw) of all points at `x` and whether their CE input gradient is exactly
  zero (batch b uses ``fold_in(key, b)``)."""
  m, logits, zero = run.model, [], []
  for b, (chunk, size) in enumerate(run.batches(np.arange(len(x)))):
    xb, yb = run.put(pad_rows(x[chunk], size), pad_rows(run.y[chunk], size))
    out, z = probe_batch(m.params, m.state, xb, yb, jax.random.fold_in(key, b),
                         apply_fn=m.apply_fn, randomized=m.randomized)
    logits.append(to_host(out)[:len(chunk)])
    zero.append(to_host(z)[:len(chunk)])
  return np.concatenate(logits), np.concatenate(zero)


def _binarization(run, names, suite, key, n_points, n_inner):
  """The binarization test (`fat_jax.evaluate.binarization`) of the suite's attacks that can
  attack a 2-class model, on the first `n_points` points with `n_inner` inner points each:
  (record, forwards, backwards)."""
  if run.model.randomized or suite == 'transfer' or jax.process_count() > 1:
    return sanity.skipped('deterministic models, in one process, attacked themselves only'), 0, 0
  usable, _ = binarization.binary_attacks(names, run.norm, run.x)
  if not usable:
    return sanity.check_binarization([], min(n_points, len(run.x)), usable), 0, 0
  result = binarization.binarization_test(
      run.model, run.x[:n_points], eps=run.eps, norm=run.norm, attacks=usable,
      seed=int(jax.random.randint(key, (), 0, 2 ** 31 - 1)), options=run.options,
      n_inner=n_inner, batch_size=run.batch_size)
  record = sanity.check_binarization(result['attack_success'], result['n_sampled'], usable,
                                     result['setup_failures'])
  record.update(feature_node=result['feature_node'], n_inner=result['n_inner'])
  return record, result['forward'], result['backward']


def run_sanity_checks(run, names, suite, clean, scores, final, x_adv, by_attack, key, *,
                   eps_sweep, square_check, check_pgd_steps, sweep_steps, eot_check_n,
                   optional=(), binarization_n=binarization.N_POINTS,
                   binarization_inner=binarization.N_INNER):
  """The checks of `fat_jax.evaluate.sanity` for one evaluation, and their forward/backward passes.

  The extra attacks (FGSM, PGD, Square, ε sweep, frozen noise, EOT with K = 100) run
  white-box from the clean points and do not change the suite's result. First the logits at
  the clean and the adversarial points are probed: NaN or inf there raises
  `sanity.NonFiniteLogitsError` (`sanity.require_finite_logits`) before any extra attack.
  `optional`: names of `OPTIONAL_CHECKS` to run too ('binarization': the binarization test of
  the suite's attacks on the first `binarization_n` points, `binarization_inner` inner points
  each).
  """
  n, draws, randomized = len(run.x), run.draws(), run.model.randomized
  keys = {name: jax.random.fold_in(key, i) for i, name in enumerate((
      'rescore', 'fgsm', 'pgd', 'square', 'sweep', 'probe', 'draw', 'frozen_draw', 'frozen',
      'noise_free', 'eot', 'eot_rescore', 'binarization'))}
  counts = {'forward': 0, 'backward': 0}

  def side_attacks(scorer, attack_names, start_scores, k, **kw):
    """`attack_names` in turn on `scorer.model` (per-point worst case): scores and x_adv."""
    s, xa = start_scores.copy(), scorer.x.copy()
    for i, name in enumerate(attack_names):
      f, b = scorer.attack(name, scorer.model, s, xa, jax.random.fold_in(k, i), **kw)
      counts['forward'] += f
      counts['backward'] += b
    return s, xa

  def side_attack(name, start_scores, k, **kw):
    return side_attacks(run, (name,), start_scores, k, **kw)[0]

  def clean_scores(scorer, k):
    counts['forward'] += len(scorer.x) * scorer.draws()
    return scorer.score(scorer.x, k)

  logits, zero = _probe(run, run.x, keys['probe'])
  sanity.require_finite_logits(logits, _probe(run, x_adv, keys['probe'])[0])
  counts['forward'] += 2 * n
  counts['backward'] += 2 * n
  checks = {'validity': sanity.check_validity(run.x, x_adv, run.eps, run.norm)}
  again = run.score(x_adv, keys['rescore'])
  counts['forward'] += n * draws
  if randomized:
    checks['reevaluation'] = {
        'status': sanity.INFO, 'selected_accuracy': float(scores.mean()),
        'fresh_accuracy': float(final.mean()),
        'message': f'scores of the selected points {scores.mean():.4f}, re-scored with fresh '
                   f'draws {final.mean():.4f} (reported), again {again.mean():.4f}'}
  else:
    checks['reevaluation'] = sanity.check_reevaluation(scores > 0.5, again > 0.5)

  fgsm = side_attack('fgsm', clean, keys['fgsm'])
  levels = [('clean', clean > 0.5), ('fgsm', fgsm > 0.5)]
  if randomized:
    levels.append((suite, final > 0.5))
    checks['more_iterations'] = sanity.skipped(
        'deterministic models only (randomised models: frozen_noise, eot_samples)')
  else:
    # PGD-k and PGD-2k with 2 restarts; the same key gives both the same first start.
    pgd_options = lambda steps, restarts: dataclasses.replace(
        run.options, pgd_steps=steps, pgd_restarts=restarts)
    weak = side_attack('pgd', clean, keys['pgd'], options=pgd_options(check_pgd_steps, 1))
    strong = side_attack('pgd', clean, keys['pgd'], options=pgd_options(2 * check_pgd_steps, 2))
    checks['more_iterations'] = sanity.check_more_iterations(
        f'PGD-{check_pgd_steps}', float(weak.mean()), f'PGD-{2 * check_pgd_steps}-2',
        float(strong.mean()), int(np.sum((strong > 0.5) & (weak < 0.5))),
        attacked=int(np.sum(clean > 0)))
    pgd = scores if names == ('pgd',) else weak
    levels.append(('pgd', pgd > 0.5))
    checks['fgsm_pgd_gap'] = sanity.check_fgsm_pgd_gap(float(fgsm.mean()), float(pgd.mean()))
    if suite not in ('pgd', 'transfer'):
      levels.append((suite, final > 0.5))
  checks['ordering'] = sanity.check_ordering(levels)

  if 'square' in names[1:] and suite != 'transfer':
    before = list(by_attack.values())[names.index('square') - 1]
    checks['square'] = sanity.check_square(before, by_attack['square'])
  elif (square_check and 'square' not in names and suite != 'transfer' and not randomized
        and square_fits(run.x, run.norm)):
    short = dataclasses.replace(run.options, square_queries=min(run.options.square_queries,
                                                                 sanity.SQUARE_CHECK_QUERIES))
    checks['square'] = sanity.check_square(float(final.mean()), float(
        side_attack('square', final, keys['square'], options=short).mean()))
  else:
    checks['square'] = sanity.skipped(
        'Square needs a deterministic model and white-box attacks before it' if 'square' in names
        or randomized or suite == 'transfer' else
        'Square L2 needs images of at least 5 × 5 pixels' if not square_fits(run.x, run.norm)
        else 'the suite has no Square attack (square_check=True runs it)')
  checks['gradient_free'] = sanity.check_gradient_free(checks['square'])

  if eps_sweep:
    default = ([f * run.eps for f in SWEEP_FRACTIONS] if run.norm == 'L2' else
               [min(f * run.eps, 1.0) for f in SWEEP_FRACTIONS] + [1.0])
    values = sorted(set(eps_sweep if not isinstance(eps_sweep, bool) else default))
    sweep_options = dataclasses.replace(run.options, apgd_steps=sweep_steps, apgd_restarts=1)
    accuracies = [float(side_attack('apgd-ce', clean, jax.random.fold_in(keys['sweep'], i),
                                    eps=e, options=sweep_options).mean())
                  for i, e in enumerate(values)]
    checks['eps_sweep'] = sanity.check_eps_sweep(values, accuracies, run.norm)
  else:
    checks['eps_sweep'] = sanity.skipped('off (eps_sweep=True runs APGD-CE over an ε sweep)')

  if not randomized or suite == 'transfer':
    reason = 'randomised models only' if not randomized else 'transfer attacks use no EOT'
    checks['frozen_noise'] = checks['eot_samples'] = sanity.skipped(reason)
  else:
    # The suite's attacks on one frozen draw and, for `with_input_noise`, on the noise-free
    # model. They run on every point, so that a draw whose noise depends on a point's place in
    # its batch stays the same draw for that point throughout.
    m = run.model
    references = {'frozen': Classifier(_OneDraw(m.apply_fn), (m.params, keys['frozen_draw']),
                                       m.state)}
    if isinstance(m.apply_fn, InputNoise):
      references['noise_free'] = Classifier(m.apply_fn.apply_fn, m.params, m.state)
    robust = {}
    for name, model in references.items():
      scorer = dataclasses.replace(run, model=model)
      robust[name], _ = side_attacks(scorer, names, clean_scores(scorer, keys[name]), keys[name],
                                     every_point=True)
    checks['frozen_noise'] = sanity.check_frozen_noise(robust['frozen'], final,
                                                       robust.get('noise_free'))
    k = run.options.eot_samples
    if not eot_check_n:
      checks['eot_samples'] = sanity.skipped(
          f'off (eot_check_n=N reruns the suite with K = {EOT_CHECK_SAMPLES} on N points)')
    elif k >= EOT_CHECK_SAMPLES:
      checks['eot_samples'] = sanity.skipped(f'the suite already uses K = {k}')
    else:
      m_check = min(eot_check_n, n)
      subset = dataclasses.replace(run, x=run.x[:m_check], y=run.y[:m_check],
                                   options=dataclasses.replace(run.options,
                                                               eot_samples=EOT_CHECK_SAMPLES))
      _, x_check = side_attacks(subset, names, clean[:m_check], keys['eot'])
      rescored = subset.score(x_check, keys['eot_rescore'])
      counts['forward'] += m_check * draws
      checks['eot_samples'] = sanity.check_eot_samples(k, final[:m_check], EOT_CHECK_SAMPLES,
                                                       rescored)

  if 'binarization' in optional:
    checks['binarization'], f, b = _binarization(run, names, suite, keys['binarization'],
                                                 binarization_n, binarization_inner)
    counts['forward'] += f
    counts['backward'] += b
  else:
    checks['binarization'] = sanity.skipped("off (checks=('binarization',) runs the "
                                            'binarization test of the attacks)')

  logits_again, _ = _probe(run, run.x, keys['probe'])
  counts['forward'] += n
  counts['backward'] += n
  checks['logits'] = sanity.check_logits(logits)
  checks['prediction'] = sanity.check_prediction(logits, run.y)
  checks['zero_gradients'] = sanity.check_zero_gradients(zero)
  draw_change = None
  if randomized:
    other, _ = _probe(run, run.x, keys['draw'])
    draw_change = float(np.abs(other - logits).max())
    counts['forward'] += n
    counts['backward'] += n
  checks['determinism'] = sanity.check_determinism(float(np.abs(logits_again - logits).max()),
                                                   randomized, draw_change)
  return checks, counts
