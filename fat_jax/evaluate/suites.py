"""Attack suites on any JAX classifier: `evaluate` (AutoAttack-standard, AutoAttack-rand with
EOT, PGD, transfer, or a custom list), the sanity checks of `fat_jax.evaluate.checks` with it,
and the padded, bucketed batches every attack and score runs on.

A point counts as robust only if it is classified correctly both clean and under
every attack (per-point worst case, as AutoAttack counts).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from fat_jax import validation

from fat_jax.attacks.convention import pixel_problem
from fat_jax.attacks.core import check_eps
from fat_jax.data import shard_batch
from fat_jax.evaluate import sanity
from fat_jax.evaluate.binarization import N_INNER as BINARIZATION_INNER
from fat_jax.evaluate.binarization import N_POINTS as BINARIZATION_POINTS
from fat_jax.evaluate.checks import OPTIONAL_CHECKS, run_sanity_checks
from fat_jax.evaluate.classifier import Classifier, as_classifier, count_classes
from fat_jax.evaluate.output import format_table
from fat_jax.evaluate.pieces import pad_rows, padded_length
from fat_jax.evaluate.registry import (ATTACKS, EOT_ATTACKS, REFUSED_ATTACKS, SUITES,
                                       SuiteOptions, attack_batch, attack_in_pieces)
from fat_jax.losses import accuracy
from fat_jax.parallel import replicate, to_host

log = logging.getLogger('fat_jax')

SINGLE_DRAW_KEY = 1 << 30   # fold_in index of the 'rand' rule's draw (batch indices stay below)


@functools.partial(jax.jit, static_argnames=('apply_fn', 'randomized', 'draws'))
def score_batch(params, state, x, y, key, *, apply_fn, randomized: bool = False, draws: int = 1):
  """Per example, the fraction of forwards classifying x correctly: one forward for a
  deterministic model, `draws` draws (keys ``fold_in(key, m)``) for a randomised one."""
  if not randomized:
    return accuracy(apply_fn(params, state, x, False)[0], y)

  def one_draw(m, total):
    return total + accuracy(apply_fn(params, state, x, False, jax.random.fold_in(key, m))[0], y)

  return jax.lax.fori_loop(0, draws, one_draw, jnp.zeros((len(x),), jnp.float32)) / draws


def _batches(idx: np.ndarray, batch_size: int, multiple: int = 1):
  """(indices, padded length) of consecutive chunks of `idx`."""
  for lo in range(0, len(idx), batch_size):
    chunk = idx[lo:lo + batch_size]
    yield chunk, padded_length(len(chunk), batch_size, multiple)


@dataclasses.dataclass
class _Run:
  """What an evaluation works on: the scored model, the data, the settings."""
  model: Classifier
  x: np.ndarray
  y: np.ndarray
  eps: float
  options: SuiteOptions
  batch_size: int
  progress: bool
  mesh: Optional[Mesh] = None   # data parallelism: batches split over its 'data' axis
  norm: str = 'Linf'            # the threat model: 'Linf' or 'L2'

  def draws(self) -> int:
    return self.options.n_draws if self.model.randomized else 1

  def batches(self, idx: np.ndarray):
    return _batches(idx, self.batch_size, 1 if self.mesh is None else self.mesh.shape['data'])

  def padded_batch(self, chunk: np.ndarray, size: int):
    """Points `chunk` of x and y, padded to `size`, on the devices."""
    return self.put(pad_rows(self.x[chunk], size), pad_rows(self.y[chunk], size))

  def put(self, *arrays):
    """Padded host batches on the devices (split over the mesh's data axis, if any)."""
    return arrays if self.mesh is None else shard_batch(arrays, self.mesh)

  def score(self, x: np.ndarray, key, draws: int | None = None) -> np.ndarray:
    """Scores of all points at `x` over `draws` draws (default `draws()`; fixed batches, batch
    b uses ``fold_in(key, b)``)."""
    out = []
    for b, (chunk, size) in enumerate(self.batches(np.arange(len(x)))):
      m = self.model
      xb, yb = self.put(pad_rows(x[chunk], size), pad_rows(self.y[chunk], size))
      s = score_batch(m.params, m.state, xb, yb, jax.random.fold_in(key, b),
                      apply_fn=m.apply_fn, randomized=m.randomized, draws=draws or self.draws())
      out.append(to_host(s)[:len(chunk)])
    return np.concatenate(out)

  def attack(self, name: str, attacker: Classifier, scores: np.ndarray, x_adv: np.ndarray, key,
             eps: float | None = None, options: SuiteOptions | None = None,
             every_point: bool = False, single_draw: np.ndarray | None = None
             ) -> tuple[int, int]:
    """Runs attack `name` of `attacker` on the points with score > 0 (all with `every_point`,
    which keeps every point in the same place of the same batches as `score`).

    Each unit (one per target for targeted attacks) runs only on the points
    still (partly) robust; a point takes a new adversarial example when it
    lowers its score (per-point worst case). Updates `scores` and `x_adv` in
    place; returns the forward and backward passes (scoring included).

    `single_draw` (randomised models): per-point flags of AutoAttack's 'rand' rule, updated
    in place: the points flagged are attacked too, and a point loses its flag when one fresh
    draw misclassifies the attack's returned point.
    """
    eps = self.eps if eps is None else eps
    options = options or self.options
    # A static jit argument: the fields this attack does not use are fixed (no recompilation).
    options = dataclasses.replace(options, n_draws=0,
                                  eot_samples=options.eot_samples if attacker.randomized else 1)
    entry = ATTACKS[name]
    units = options.n_target_classes if entry.targeted else 1
    flagged = (lambda: scores > 0) if single_draw is None else (
        lambda: (scores > 0) | single_draw)
    targets = lambda: np.arange(len(scores)) if every_point else np.flatnonzero(flagged())
    forward = backward = 0
    # With a progress bar, an attack with pieces runs in them (the same result) so that it
    # moves inside a batch; without one, in one call (one program to compile), but PGD, which
    # always runs per restart.
    in_pieces = entry.pieces is not None and (self.progress or entry.always_in_pieces)
    with tqdm(total=units * len(targets()), desc=name, leave=False, unit='pt',
              disable=not self.progress) as bar:
      for unit in range(units):
        unit_key = jax.random.fold_in(key, unit)
        for b, (chunk, size) in enumerate(self.batches(targets())):
          batch_key = jax.random.fold_in(unit_key, b)
          attack_key, score_key = jax.random.split(batch_key)
          xb, yb = self.padded_batch(chunk, size)
          batch = (attacker.params, attacker.state, xb, yb, attack_key, eps, unit)
          settings = dict(apply_fn=attacker.apply_fn, name=name, options=options,
                          randomized=attacker.randomized, norm=self.norm)
          if in_pieces:   # the bar moves per piece
            shown = [0.0]   # fraction of this batch shown on the bar so far

            def on_piece(done, n=len(chunk), shown=shown):
              bar.update(n * (done - shown[0]))
              shown[0] = done
            delta, fwd, bwd = attack_in_pieces(
                *batch, **settings, on_piece=on_piece if self.progress else None)
            on_piece(1.0)   # a run that ended early: the rest at once
          else:
            delta, fwd, bwd = attack_batch(*batch, **settings)
          candidate = xb + delta
          m, n = self.model, len(chunk)
          s = to_host(score_batch(m.params, m.state, candidate, yb, score_key,
                                  apply_fn=m.apply_fn, randomized=m.randomized,
                                  draws=self.draws()))[:n]
          lower = s < scores[chunk]
          scores[chunk[lower]] = s[lower]
          x_adv[chunk[lower]] = to_host(candidate)[:n][lower]
          forward += int(to_host(fwd)[:n].sum()) + n * self.draws()
          backward += int(to_host(bwd)[:n].sum())
          if single_draw is not None:
            one = to_host(score_batch(m.params, m.state, candidate, yb,
                                      jax.random.fold_in(batch_key, SINGLE_DRAW_KEY),
                                      apply_fn=m.apply_fn, randomized=True, draws=1))[:n]
            single_draw[chunk] &= one > 0.5
            forward += n
          if not in_pieces:
            bar.update(n)
    return forward, backward


def _suite_attacks(suite: str, attacks) -> tuple[str, ...]:
  if suite not in SUITES:
    raise ValueError(f'Unknown suite {suite!r}; known: {sorted(SUITES)}.')
  names = tuple(attacks) if attacks else SUITES[suite]
  if not names:
    raise ValueError("suite='custom' needs a list of attacks (attacks=[...]).")
  refused = [a for a in names if a in REFUSED_ATTACKS]
  if refused:
    raise ValueError('; '.join(f'eval.attacks: {REFUSED_ATTACKS[a]}' for a in refused) + '.')
  unknown = [a for a in names if a not in ATTACKS]
  if unknown:
    raise ValueError(f'Unknown attacks {unknown}; known: {tuple(ATTACKS)}.')
  return names


def suite_options(suite: str, options: dict, n_classes: int) -> SuiteOptions:
  """The `SuiteOptions` of `suite` with `options` over its defaults, for `n_classes`."""
  fields = {f.name for f in dataclasses.fields(SuiteOptions)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise ValueError(f'Unknown suite options {unknown}; known: {sorted(fields)}.')
  if suite == 'aa_rand':
    options = {'eot_samples': 20, **options}
  if suite == 'aa_plus':   # AutoAttack's set_version('plus')
    options = {'apgd_restarts': 5, 'fab_restarts': 5, 'apgd_t_restarts': 1, 'fab_t_restarts': 1,
               **options}
  opts = SuiteOptions(**options)
  # AutoAttack's check_n_classes: at most C − 1 targets.
  return dataclasses.replace(opts, n_target_classes=min(opts.n_target_classes, n_classes - 1))


def _check_data(x, y) -> tuple[np.ndarray, np.ndarray]:
  """x as float32 in [0, 1], and y as given (cast once `validate_evaluation` accepts it)."""
  x, y = np.asarray(x, np.float32), np.asarray(y)
  problem = pixel_problem(float(x.min()), float(x.max()))
  if problem:
    raise ValueError(problem)
  return x, y


def _attacker(model: Classifier, suite: str, surrogate) -> Classifier:
  """The model the attacks run on: the surrogate for 'transfer', else the model itself."""
  if (suite == 'transfer') != (surrogate is not None):
    raise ValueError("suite='transfer' needs surrogate=(apply_fn, params, state); other suites "
                     'take none.')
  if surrogate is None:
    return model
  if isinstance(surrogate, Classifier):
    return as_classifier(surrogate)
  if len(surrogate) != 3:
    raise ValueError('surrogate must be (apply_fn, params, state) or a Classifier of a '
                     'deterministic model.')
  return as_classifier(*surrogate)


def _check_compatible(names, randomized: bool, n_classes: int, norm: str, x) -> None:
  entries = [ATTACKS[a] for a in names]
  other_norm = [a for a, e in zip(names, entries) if norm not in e.norms]
  if other_norm:
    raise ValueError(f'Attacks {other_norm} are L∞ attacks; drop them for norm={norm!r}.')
  for e in entries:
    problem = e.input_problem and e.input_problem(x, norm)
    if problem:
      raise ValueError(problem)
  if randomized:
    bad = [a for a, e in zip(names, entries) if not e.eot]
    if bad:
      raise ValueError(f'Attacks {bad} have no EOT; a randomised model can be attacked with '
                       f'{EOT_ATTACKS} (suite aa_rand).')
  need = max(e.min_classes for e in entries)
  if n_classes < need:
    raise ValueError(f'Attacks {list(names)} need at least {need} classes, the model has '
                     f'{n_classes}.')


def _interval(scores: np.ndarray, draws: int) -> list[float]:
  """95% interval of the mean score from the binomial noise of `draws` draws per point."""
  se = np.sqrt(np.sum(scores * (1 - scores)) / draws) / len(scores)
  mean = float(scores.mean())
  return [float(max(mean - 1.96 * se, 0.0)), float(min(mean + 1.96 * se, 1.0))]


def evaluate(apply_fn: Callable | Classifier, params=None, state=None, x=None, y=None, *,
             suite: str = 'aa_standard', eps: float, seed: int = 0,
             attacks: Sequence[str] | None = None, surrogate=None,
             randomized: bool = False, batch_size: int = 256,
             checks: bool | Sequence[str] = True, binarization_n: int = BINARIZATION_POINTS,
             binarization_inner: int = BINARIZATION_INNER,
             eps_sweep: bool | Sequence[float] = False, square_check: bool = True,
             check_pgd_steps: int = 20, sweep_steps: int = 20, eot_check_n: int = 0,
             progress: bool = True, verbose: bool = True, mesh: Mesh | None = None,
             norm: str = 'Linf', individual: bool = False, **options) -> dict:
  """Robust accuracy of any JAX classifier under an attack suite, with sanity checks.

  `apply_fn(params, state, x, train) -> (logits, state, features)`, or with
  `randomized=True` ``apply_fn(params, state, x, train, key)`` (a draw of the
  model's randomness per key); evaluation mode (`train=False`). A plain
  ``f(x) -> logits`` (``evaluate(f, x=x, y=y, ...)``), ``f(params, x) -> logits``
  (``evaluate(f, params, x=x, y=y, ...)``) or a `Classifier` (e.g. from
  `from_logits_fn` / `from_params_fn`) works too: see `fat_jax.evaluate.classifier`;
  a callable of another shape is a TypeError listing these. `x`: float32 in [0, 1],
  shape (N, ...) (NHWC for images); `y`: int labels (N,).

  Suites: 'aa_standard' (APGD-CE → APGD-T → FAB-T → Square), 'aa_plus' (AutoAttack's
  'plus': APGD-CE, APGD-DLR and FAB with 5 restarts, Square, APGD-T, FAB-T), 'aa_rand'
  (APGD-CE → APGD-DLR with EOT over `eot_samples` = 20 draws), 'pgd'
  (PGD-`pgd_steps`-`pgd_restarts`, step `pgd_step_size`·ε), 'transfer'
  (`attacks`, default APGD-CE, computed on `surrogate` = (apply_fn, params,
  state) or a `Classifier`, and scored on the model), 'custom' (`attacks`, names in `ATTACKS`).
  `norm`: the threat model, 'Linf' (‖δ‖∞ ≤ ε) or 'L2' (‖δ‖₂ ≤ ε), always with x + δ in
  [0, 1]; every attack and check runs in it (docs/evaluation.md).
  Each attack starts from the clean point and runs only on points still
  robust; a point is robust if it is classified correctly clean and under every
  attack (per-point worst case). With `individual`, every attack runs from the clean point
  on all clean-correct points (AutoAttack's ``run_standard_evaluation_individual``):
  'robust_accuracy_individual' holds each attack's own accuracy, the rest of the report
  the per-point worst case over all of them. Randomised models are scored over `n_draws`
  fresh draws per point: the expected per-draw accuracy (its mean) with a 95% interval and
  the majority vote; the final number re-scores the chosen adversarial examples with fresh
  draws. Their report adds 'autoattack_rand_rule', AutoAttack's 'rand' count: a point is
  broken if one draw at the clean point or at any attack's returned point misclassifies
  it. `**options` are `SuiteOptions` fields.

  With `checks`, the sanity checks of `fat_jax.evaluate.sanity` run too: FGSM and
  PGD-`check_pgd_steps` for the per-point order, PGD-2·`check_pgd_steps` with 2
  restarts against it (more iterations), and for a randomised model the suite's
  attacks on one frozen draw (and on the noise-free model of `with_input_noise`);
  `eps_sweep` adds APGD-CE with `sweep_steps` steps at ε ∈ {0, ε/2, ε, 2ε, 1}
  or the given values; `square_check` (default) runs a short Square
  (`sanity.SQUARE_CHECK_QUERIES` queries) after a suite without it;
  `eot_check_n` > 0 reruns a randomised model's suite with K = 100 on the first
  `eot_check_n` points. `checks` as a list of names adds optional checks to these:
  ``checks=('binarization',)`` runs the binarization test of Zimmermann et al. 2022 (the
  suite's attacks on a binarized copy of the model where an adversarial example provably
  exists) on the first `binarization_n` points, each with `binarization_inner` inner points
  (docs/evaluation.md). A check with nothing to test (no robust point
  left) reports 'uninformative' with its reason. Same seed ⇒ same result.

  With a `mesh` (`fat_jax.parallel.make_data_mesh()`), every batch is split over its
  ``data`` axis (`batch_size` a multiple of its size) and the parameters are replicated:
  data parallelism over all devices (and processes), the same result as one device.

  Returns a JSON-ready report (see `save_report`) plus the arrays 'flags'
  (per-point 'clean' and 'robust'), 'scores' and 'x_adv'. With `verbose` (default) process 0
  also prints its table (`format_table`) to stdout; `verbose=False` only logs it (INFO).
  """
  start = time.time()
  if x is None or y is None:
    raise ValueError('evaluate needs the points x (N, ...) in [0, 1] and their labels y (N,): '
                     'evaluate(model, [params, state,] x=x, y=y, eps=...).')
  validation.validate_arguments(
      dict(seed=seed, batch_size=batch_size, check_pgd_steps=check_pgd_steps,
           sweep_steps=sweep_steps, eot_check_n=eot_check_n, **options), x, y)
  eps = float(eps)
  check_eps(eps, norm)
  names = _suite_attacks(suite, attacks)
  run_checks, optional = (checks, ()) if isinstance(checks, bool) else (True, tuple(checks))
  if set(optional) - set(OPTIONAL_CHECKS):
    raise ValueError(f'Unknown checks {sorted(set(optional) - set(OPTIONAL_CHECKS))}; checks is '
                     f'True, False or a list of optional checks from {OPTIONAL_CHECKS}.')
  for name, count, least in (('binarization_n', binarization_n, 0),
                             ('binarization_inner', binarization_inner, 1)):
    if isinstance(count, bool) or not isinstance(count, int) or count < least:
      raise ValueError(f'{name} must be an integer ≥ {least}, got {count!r}.')
  x, y = _check_data(x, y)
  model = as_classifier(apply_fn, params, state, randomized)
  attacker = _attacker(model, suite, surrogate)
  if mesh is not None:
    if batch_size % mesh.shape['data']:
      raise ValueError(f"batch_size={batch_size} cannot be split over the {mesh.shape['data']} "
                       "devices of the mesh's data axis: make it a multiple of the device count.")
    on_mesh = lambda m: m._replace(**dict(zip(('params', 'state'),
                                              replicate((m.params, m.state), mesh))))
    attacks_itself = attacker is model
    model = on_mesh(model)
    attacker = model if attacks_itself else on_mesh(attacker)
  key = jax.random.key(seed)
  clean_key, fresh_key, check_key, attack_key = (jax.random.fold_in(key, i) for i in range(4))
  n_classes = count_classes(model, x, clean_key)
  validation.validate_evaluation(eps, x, y, n_classes, norm)
  y = y.astype(np.int32)
  _check_compatible(names, randomized, n_classes, norm, x)
  opts = suite_options(suite, options, n_classes)
  run = _Run(model, x, y, eps, opts, batch_size, progress, mesh, norm)

  t0 = time.time()
  clean = run.score(x, clean_key)
  passes = {'clean': {'forward': len(x) * run.draws(), 'backward': 0}}
  # AutoAttack's 'rand' rule: one draw at the clean point, then one at each returned point.
  single_draw = clean_single_draw = None
  if randomized:
    clean_single_draw = run.score(x, jax.random.fold_in(key, 4), draws=1) > 0.5
    single_draw = clean_single_draw.copy()
    passes['clean']['forward'] += len(x)
  single_draw_by_attack = {}
  times = {'clean': time.time() - t0}
  scores, x_adv = clean.copy(), x.copy()
  by_attack, majority_by_attack, alone = {}, {}, {}
  for i, name in enumerate(names):
    t0 = time.time()
    attack_key_i = jax.random.fold_in(attack_key, i)
    if individual:   # from the clean points, on all of them; then the per-point worst case
      own, own_x = clean.copy(), x.copy()
      forward, backward = run.attack(name, attacker, own, own_x, attack_key_i,
                                     single_draw=single_draw)
      alone[name] = float(own.mean())
      lower = own < scores
      scores[lower], x_adv[lower] = own[lower], own_x[lower]
    else:
      forward, backward = run.attack(name, attacker, scores, x_adv, attack_key_i,
                                     single_draw=single_draw)
    times[name] = time.time() - t0
    passes[name] = {'forward': forward, 'backward': backward}
    by_attack[name] = float(scores.mean())
    majority_by_attack[name] = float(np.mean(scores > 0.5))
    if randomized:
      single_draw_by_attack[name] = float(single_draw.mean())

  final = run.score(x_adv, fresh_key) if randomized else scores
  report = {
      'suite': suite, 'attacks': list(names), 'norm': norm, 'eps': eps, 'n': len(x),
      'seed': seed, 'randomized': randomized, 'individual': individual, 'n_classes': n_classes,
      'settings': {**dataclasses.asdict(opts), 'batch_size': batch_size,
                   'checks': checks if isinstance(checks, bool) else list(optional),
                   'binarization_n': binarization_n, 'binarization_inner': binarization_inner,
                   'check_pgd_steps': check_pgd_steps, 'square_check': square_check,
                   'eps_sweep': eps_sweep if isinstance(eps_sweep, bool) else list(eps_sweep),
                   'sweep_steps': sweep_steps, 'eot_check_n': eot_check_n},
      'clean_accuracy': float(clean.mean()), 'robust_accuracy': float(final.mean()),
      'robust_accuracy_by_attack': by_attack, 'time_by_attack_s': times,
      'forward_passes': sum(p['forward'] for p in passes.values()),
      'backward_passes': sum(p['backward'] for p in passes.values()),
  }
  if randomized:
    passes['final'] = {'forward': len(x) * run.draws(), 'backward': 0}
    report['forward_passes'] += passes['final']['forward']
    report.update(
        n_draws=run.draws(), clean_accuracy_ci95=_interval(clean, run.draws()),
        clean_majority_accuracy=float(np.mean(clean > 0.5)),
        robust_accuracy_ci95=_interval(final, run.draws()),
        robust_majority_accuracy=float(np.mean(final > 0.5)),
        robust_majority_by_attack=majority_by_attack,
        robust_accuracy_selected=float(scores.mean()),
        robust_accuracy_definition=(
            f'expected per-draw accuracy: mean over points of the fraction of {run.draws()} '
            'fresh draws classifying the chosen adversarial example correctly'),
        autoattack_rand_rule={
            'clean_accuracy': float(clean_single_draw.mean()),
            'robust_accuracy': float(single_draw.mean()),
            'robust_accuracy_by_attack': single_draw_by_attack,
            'definition': "AutoAttack's 'rand' rule (fra31/auto-attack, version='rand'): a "
                          'point is broken if one draw at the clean point or one draw at any '
                          "attack's returned point misclassifies it"})
  if individual:
    report['robust_accuracy_individual'] = alone
  report['passes'] = passes
  report['timing'] = {'suite_s': time.time() - start, 'checks_s': 0.0}
  if run_checks:
    t0 = time.time()
    report['checks'], passes['checks'] = run_sanity_checks(
        run, names, suite, clean, scores, final, x_adv, by_attack, check_key,
        eps_sweep=eps_sweep, square_check=square_check, check_pgd_steps=check_pgd_steps,
        sweep_steps=sweep_steps, eot_check_n=eot_check_n, optional=optional,
        binarization_n=binarization_n, binarization_inner=binarization_inner)
    times['checks'] = report['timing']['checks_s'] = time.time() - t0
  report['wall_time_s'] = time.time() - start
  report['devices'] = f"{1 if mesh is None else mesh.size} × {jax.devices()[0].device_kind}"
  if verbose and jax.process_index() == 0:
    print(format_table(report), flush=True)
  else:
    log.info('%s', format_table(report))
  for name, check in report.get('checks', {}).items():
    if check['status'] == sanity.WARN:
      log.warning('check %s: %s', name, check['message'])
  report.update(flags={'clean': clean > 0.5, 'robust': final > 0.5}, scores=final, x_adv=x_adv)
  return report
