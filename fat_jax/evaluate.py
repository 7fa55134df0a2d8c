"""Robustness evaluation (SPEC §4).

* `evaluate_robustness` / `robust_flags`: clean, FGSM and PGD-k-r accuracy per
  point of a `Model` (the training loop's monitor and final evaluation).
* `evaluate`: an attack suite (AutoAttack-standard, AutoAttack-rand with EOT,
  PGD, transfer, or a custom list) on any JAX classifier, with the sanity
  checks of `fat_jax.sanity` and a RobustBench-style report.
* `evaluate_checkpoint`: `evaluate` on the latest checkpoint of a run
  (``launch.py --mode=eval``).

A point counts as robust to an attack only if it is classified correctly both
clean and under the attack (per-point worst case, as AutoAttack counts).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from fat_jax import run_log, sanity, validation
from fat_jax.attacks import (apgd_attack, clip_to_box, fab_attack, fgsm_attack, pgd_attack,
                             project_linf, square_attack)
from fat_jax.attacks.apgd import top_targets
from fat_jax.attacks.core import check_eps
from fat_jax.attacks.eot import (InputNoise, eot_loss_and_grad, freeze_noise, randomized_gradient,
                                 randomized_logits, with_input_noise)
from fat_jax.checkpoint import Checkpointer
from fat_jax.data import augment, load_dataset, shard_batch
from fat_jax.losses import accuracy, cross_entropy
from fat_jax.losses.feature_diff import feature_distance
from fat_jax.methods import init_train_state
from fat_jax.models import build_model
from fat_jax.parallel import is_writer, make_data_mesh, replicate, to_host

log = logging.getLogger('fat_jax')


@dataclasses.dataclass(frozen=True)
class PGDSettings:
  """Evaluation attack settings, recorded with every result."""
  eps: float
  steps: int = 50
  restarts: int = 10
  step_size: float = 0.0    # absolute; 0 means ε/4

  @property
  def alpha(self) -> float:
    return self.step_size or self.eps / 4


@functools.partial(jax.jit, static_argnums=(0, 1))
def robust_flags(model, settings: PGDSettings, params, state, images, labels, key):
  """Per-example correctness {'clean', 'fgsm', 'pgd'} in eval mode (BN running stats), and
  'vact': {'fgsm'|'pgd': {node: ‖M(x) − M(x + δ)‖₂ per example}} from the same forwards."""
  x = augment(key, images, mode='none')
  clean_logits, _, clean_features = model.apply(params, state, x, False)
  clean = accuracy(clean_logits, labels)
  eps = settings.eps
  fgsm = fgsm_attack(model.apply, params, state, x, labels, key, eps=eps, alpha=eps, train=False)
  pgd = pgd_attack(model.apply, params, state, x, labels, key, eps=eps, alpha=settings.alpha,
                   steps=settings.steps, restarts=settings.restarts)
  flags, vact = {'clean': clean}, {}
  for name, delta in (('fgsm', fgsm.delta), ('pgd', pgd.delta)):
    logits, _, features = model.apply(params, state, x + delta, False)
    flags[name] = clean * accuracy(logits, labels)
    vact[name] = {node: feature_distance(clean_features[node], features[node])
                  for node in features}
  return {**flags, 'vact': vact}


def evaluate_robustness(model, params, state, images, labels, settings: PGDSettings, *,
                        mesh, batch_size: int, seed: int = 0, desc: str = 'eval',
                        progress: bool = True) -> dict:
  """Clean / FGSM / PGD accuracy over uint8 `images`, padded to whole batches.

  Returns the accuracies, the per-point flags, the settings, the wall time and
  V_act = mean ‖M_i(x) − M_i(x + δ)‖₂ per feature node i (SPEC §2.4) at the FGSM
  point ('vact') and at the PGD point ('vact_pgd').
  """
  n = len(images)
  start = time.time()
  chunks = []
  for i, lo in enumerate(tqdm(range(0, n, batch_size), desc=desc, leave=False,
                              disable=not progress, unit='batch')):
    x, y = images[lo:lo + batch_size], labels[lo:lo + batch_size]
    pad = batch_size - len(x)
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros((pad,), y.dtype)])
    xb, yb = shard_batch((x, y), mesh)
    key = jax.random.fold_in(jax.random.key(seed), i)
    out = robust_flags(model, settings, params, state, xb, yb, key)
    chunks.append(jax.tree.map(lambda v, keep=batch_size - pad: to_host(v)[:keep], out))
  merged = jax.tree.map(lambda *c: np.concatenate(c), *chunks)
  vact = {point: {node: float(v.mean()) for node, v in nodes.items()}
          for point, nodes in merged.pop('vact').items()}
  flags = {k: v.astype(bool) for k, v in merged.items()}
  return {
      **{f'{k}_accuracy': float(v.mean()) for k, v in flags.items()},
      'vact': vact['fgsm'], 'vact_pgd': vact['pgd'],
      'n': n, 'eps': settings.eps, 'pgd_steps': settings.steps,
      'pgd_restarts': settings.restarts, 'pgd_step_size': settings.alpha,
      'seed': seed, 'wall_time_s': time.time() - start, 'flags': flags,
  }


# ---------------------------------------------------------------------------
# Attack suites on any JAX classifier (SPEC §4.2–4.4).

SUITES = {
    'aa_standard': ('apgd-ce', 'apgd-t', 'fab-t', 'square'),
    'aa_rand': ('apgd-ce', 'apgd-dlr'),
    'pgd': ('pgd',),
    'transfer': ('apgd-ce',),   # default attacks on the surrogate; `attacks=` overrides
    'custom': (),               # `attacks=` is the list
}
ATTACKS = ('fgsm', 'pgd', 'cw', 'apgd-ce', 'apgd-dlr', 'apgd-t', 'fab-t', 'square')
EOT_ATTACKS = ('fgsm', 'apgd-ce', 'apgd-dlr', 'apgd-t')  # usable on randomised models
TARGETED = ('apgd-t', 'fab-t')
APGD_LOSS = {'apgd-ce': 'ce', 'apgd-dlr': 'dlr', 'apgd-t': 'dlr_targeted'}
SWEEP_FRACTIONS = (0.0, 0.5, 1.0, 2.0)  # × ε, then ε = 1
EOT_CHECK_SAMPLES = 100  # K of the EOT check (SPEC §4.3)


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
  """Attack settings of a suite (AutoAttack-standard defaults), recorded with every result.

  `pgd_step_size` is a multiple of ε; `eot_samples` (K) applies to randomised
  models (aa_rand: 20); `n_draws` (M) fresh draws score each point of a
  randomised model.
  """
  apgd_steps: int = 100
  apgd_restarts: int = 1
  apgd_rho: float = 0.75
  n_target_classes: int = 9
  fab_steps: int = 100
  fab_restarts: int = 1
  fab_alpha_max: float = 0.1
  fab_eta: float = 1.05
  fab_beta: float = 0.9
  square_queries: int = 5000
  square_p_init: float = 0.8
  square_rescale_schedule: bool = False
  pgd_steps: int = 50
  pgd_restarts: int = 10
  pgd_step_size: float = 0.25
  eot_samples: int = 1
  n_draws: int = 100


class Classifier(NamedTuple):
  """A model to attack or score: ``apply_fn(params, state, x, train[, key])``."""
  apply_fn: Callable
  params: object
  state: object
  randomized: bool = False


@dataclasses.dataclass(frozen=True)
class _OneDraw:
  """`freeze_noise` with the draw's key carried in the parameters, ``(params, key)``: the
  attacks compile once per randomised model, not once per draw."""
  random_apply_fn: Callable

  def __call__(self, params_and_key, state, x, train):
    params, key = params_and_key
    return freeze_noise(self.random_apply_fn, key)(params, state, x, train)


@functools.partial(jax.jit, static_argnames=('apply_fn', 'name', 'options', 'randomized'))
def attack_batch(params, state, x, y, key, eps, rank, *, apply_fn, name: str,
                 options: SuiteOptions, randomized: bool = False):
  """(δ, forwards, backwards) of attack `name` on a batch, counts per example.

  `rank` picks the target of a targeted attack: class number rank + 2 by the
  clean logits. Evaluation mode (BatchNorm running statistics) throughout.
  """
  o, n = options, len(x)
  k = o.eot_samples if randomized else 1
  per = lambda f, b: (jnp.full((n,), f, jnp.int32), jnp.full((n,), b, jnp.int32))
  if name == 'fgsm':
    if randomized:
      g = eot_loss_and_grad(apply_fn, params, state, x, lambda z: cross_entropy(z, y), key,
                            samples=k)
      return (clip_to_box(x, project_linf(eps * jnp.sign(g.grad), eps)), *per(k, k))
    delta = fgsm_attack(apply_fn, params, state, x, y, key, eps=eps, alpha=eps, train=False).delta
    return (delta, *per(1, 1))
  if name in ('pgd', 'cw'):
    delta = pgd_attack(apply_fn, params, state, x, y, key, eps=eps, alpha=o.pgd_step_size * eps,
                       steps=o.pgd_steps, restarts=o.pgd_restarts,
                       loss='ce' if name == 'pgd' else 'margin').delta
    runs = o.pgd_restarts * o.pgd_steps
    return (delta, *per(runs + (o.pgd_restarts if o.pgd_restarts > 1 else 0), runs))
  target, ranking = None, 0
  if name in TARGETED:
    logits, _ = randomized_logits(apply_fn, params, state, x, key, randomized=randomized)
    target, ranking = jnp.take(top_targets(logits, o.n_target_classes), rank, axis=1), 1
  if name in APGD_LOSS:
    delta = apgd_attack(apply_fn, params, state, x, y, key, eps=eps, steps=o.apgd_steps,
                        restarts=o.apgd_restarts, loss=APGD_LOSS[name], target=target,
                        rho=o.apgd_rho, randomized=randomized, eot_samples=k).delta
    runs = o.apgd_restarts * (o.apgd_steps + 1) * k
    return (delta, *per(ranking + 1 + runs, runs))
  if name == 'fab-t':
    delta = fab_attack(apply_fn, params, state, x, y, key, eps=eps, target=target,
                       steps=o.fab_steps, restarts=o.fab_restarts, alpha_max=o.fab_alpha_max,
                       eta=o.fab_eta, beta=o.fab_beta).delta
    runs = o.fab_restarts * o.fab_steps
    return (delta, *per(ranking + 1 + 2 * runs, runs))
  if name == 'square':
    result = square_attack(apply_fn, params, state, x, y, key, eps=eps, queries=o.square_queries,
                           p_init=o.square_p_init, rescale_schedule=o.square_rescale_schedule)
    return result.delta, 1 + result.queries, jnp.zeros((n,), jnp.int32)
  raise ValueError(f'Unknown attack {name!r}; known: {ATTACKS}.')


@functools.partial(jax.jit, static_argnames=('apply_fn', 'randomized', 'draws'))
def score_batch(params, state, x, y, key, *, apply_fn, randomized: bool = False, draws: int = 1):
  """Per example, the fraction of forwards classifying x correctly: one forward for a
  deterministic model, `draws` draws (keys ``fold_in(key, m)``) for a randomised one."""
  if not randomized:
    return accuracy(apply_fn(params, state, x, False)[0], y)

  def one_draw(m, total):
    return total + accuracy(apply_fn(params, state, x, False, jax.random.fold_in(key, m))[0], y)

  return jax.lax.fori_loop(0, draws, one_draw, jnp.zeros((len(x),), jnp.float32)) / draws


@functools.partial(jax.jit, static_argnames=('apply_fn', 'randomized'))
def probe_batch(params, state, x, y, key, *, apply_fn, randomized: bool = False):
  """Clean logits (one draw) and whether the CE input gradient is exactly zero, per example."""
  g = randomized_gradient(apply_fn, params, state, x, lambda z: cross_entropy(z, y), key,
                          randomized=randomized)
  return g.logits, jnp.all(g.grad.reshape(len(x), -1) == 0, axis=1)


def _bucket(m: int, batch_size: int, multiple: int = 1) -> int:
  """Padded batch length: the smallest of batch_size, ⌈batch_size/4⌉, ⌈batch_size/16⌉, …
  (each rounded up to a multiple of `multiple`, the devices of the data axis) that holds m
  points (a few compilations per attack, at most 4× padding)."""
  round_up = lambda v: -(-v // multiple) * multiple
  size = batch_size
  while True:
    smaller = round_up(-(-size // 4))
    if smaller >= size or smaller < m:
      return size
    size = smaller


def _batches(idx: np.ndarray, batch_size: int, multiple: int = 1):
  """(indices, padded length) of consecutive chunks of `idx`."""
  for lo in range(0, len(idx), batch_size):
    chunk = idx[lo:lo + batch_size]
    yield chunk, _bucket(len(chunk), batch_size, multiple)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  """`a` padded to `size` rows by repeating its last row."""
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)]) if size > len(a) else a


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

  def draws(self) -> int:
    return self.options.n_draws if self.model.randomized else 1

  def batches(self, idx: np.ndarray):
    return _batches(idx, self.batch_size, 1 if self.mesh is None else self.mesh.shape['data'])

  def put(self, *arrays):
    """Padded host batches on the devices (split over the mesh's data axis, if any)."""
    return arrays if self.mesh is None else shard_batch(arrays, self.mesh)

  def score(self, x: np.ndarray, key) -> np.ndarray:
    """Scores of all points at `x` (fixed batches; batch b uses ``fold_in(key, b)``)."""
    out = []
    for b, (chunk, size) in enumerate(self.batches(np.arange(len(x)))):
      m = self.model
      s = score_batch(m.params, m.state, *self.put(_pad(x[chunk], size), _pad(self.y[chunk], size)),
                      jax.random.fold_in(key, b), apply_fn=m.apply_fn, randomized=m.randomized,
                      draws=self.draws())
      out.append(to_host(s)[:len(chunk)])
    return np.concatenate(out)

  def attack(self, name: str, attacker: Classifier, scores: np.ndarray, x_adv: np.ndarray, key,
             eps: float | None = None, options: SuiteOptions | None = None,
             every_point: bool = False) -> tuple[int, int]:
    """Runs attack `name` of `attacker` on the points with score > 0 (all with `every_point`,
    which keeps every point in the same place of the same batches as `score`).

    Each unit (one per target for targeted attacks) runs only on the points
    still (partly) robust; a point takes a new adversarial example when it
    lowers its score (per-point worst case). Updates `scores` and `x_adv` in
    place; returns the forward and backward passes (scoring included).
    """
    eps = self.eps if eps is None else eps
    options = options or self.options
    # A static jit argument: the fields this attack does not use are fixed (no recompilation).
    options = dataclasses.replace(options, n_draws=0,
                                  eot_samples=options.eot_samples if attacker.randomized else 1)
    units = options.n_target_classes if name in TARGETED else 1
    targets = lambda: np.arange(len(scores)) if every_point else np.flatnonzero(scores > 0)
    forward = backward = 0
    with tqdm(total=units * len(targets()), desc=name, leave=False, unit='pt',
              disable=not self.progress) as bar:
      for unit in range(units):
        unit_key = jax.random.fold_in(key, unit)
        for b, (chunk, size) in enumerate(self.batches(targets())):
          attack_key, score_key = jax.random.split(jax.random.fold_in(unit_key, b))
          xb, yb = self.put(_pad(self.x[chunk], size), _pad(self.y[chunk], size))
          delta, fwd, bwd = attack_batch(
              attacker.params, attacker.state, xb, yb, attack_key, eps, unit,
              apply_fn=attacker.apply_fn, name=name, options=options,
              randomized=attacker.randomized)
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
          bar.update(n)
    return forward, backward


def _suite_attacks(suite: str, attacks) -> tuple[str, ...]:
  if suite not in SUITES:
    raise ValueError(f'Unknown suite {suite!r}; known: {sorted(SUITES)}.')
  names = tuple(attacks) if attacks else SUITES[suite]
  if not names:
    raise ValueError("suite='custom' needs a list of attacks (attacks=[...]).")
  unknown = [a for a in names if a not in ATTACKS]
  if unknown:
    raise ValueError(f'Unknown attacks {unknown}; known: {ATTACKS}.')
  return names


def _suite_options(suite: str, options: dict, n_classes: int) -> SuiteOptions:
  fields = {f.name for f in dataclasses.fields(SuiteOptions)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise ValueError(f'Unknown suite options {unknown}; known: {sorted(fields)}.')
  if suite == 'aa_rand':
    options = {'eot_samples': 20, **options}
  opts = SuiteOptions(**options)
  # AutoAttack's check_n_classes: at most C − 1 targets.
  return dataclasses.replace(opts, n_target_classes=min(opts.n_target_classes, n_classes - 1))


def _check_data(x, y) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  if x.shape[:1] != y.shape or not len(x):
    raise ValueError(f'x {x.shape} and y {y.shape} must hold the same, non-zero number of points.')
  if x.min() < 0 or x.max() > 1:
    raise ValueError(f'x must be in pixel space [0, 1] (got [{x.min():.3g}, {x.max():.3g}]); '
                     'normalise inside the apply function.')
  return x, y


def _attacker(model: Classifier, suite: str, surrogate) -> Classifier:
  """The model the attacks run on: the surrogate for 'transfer', else the model itself."""
  if (suite == 'transfer') != (surrogate is not None):
    raise ValueError("suite='transfer' needs surrogate=(apply_fn, params, state); other suites "
                     'take none.')
  if surrogate is None:
    return model
  if len(surrogate) != 3:
    raise ValueError('surrogate must be (apply_fn, params, state) of a deterministic model.')
  return Classifier(*surrogate)


def _check_compatible(names, randomized: bool, n_classes: int) -> None:
  if randomized:
    bad = [a for a in names if a not in EOT_ATTACKS]
    if bad:
      raise ValueError(f'Attacks {bad} have no EOT; a randomised model can be attacked with '
                       f'{EOT_ATTACKS} (suite aa_rand).')
  need = max([4 if a in ('apgd-t', 'fab-t') else 3 if a == 'apgd-dlr' else 2 for a in names])
  if n_classes < need:
    raise ValueError(f'Attacks {list(names)} need at least {need} classes, the model has '
                     f'{n_classes}.')


def _interval(scores: np.ndarray, draws: int) -> list[float]:
  """95% interval of the mean score from the binomial noise of `draws` draws per point."""
  se = np.sqrt(np.sum(scores * (1 - scores)) / draws) / len(scores)
  mean = float(scores.mean())
  return [float(max(mean - 1.96 * se, 0.0)), float(min(mean + 1.96 * se, 1.0))]


def evaluate(apply_fn: Callable, params, state, x, y, *, suite: str = 'aa_standard', eps: float,
             seed: int = 0, attacks: Sequence[str] | None = None, surrogate=None,
             randomized: bool = False, batch_size: int = 256, checks: bool = True,
             eps_sweep: bool | Sequence[float] = False, square_check: bool = True,
             check_pgd_steps: int = 20, sweep_steps: int = 20, eot_check_n: int = 0,
             progress: bool = True, mesh: Mesh | None = None, **options) -> dict:
  """Robust accuracy of any JAX classifier under an attack suite, with sanity checks.

  `apply_fn(params, state, x, train) -> (logits, state, features)`, or with
  `randomized=True` ``apply_fn(params, state, x, train, key)`` (a draw of the
  model's randomness per key); evaluation mode (`train=False`). `x`: float32
  in [0, 1], shape (N, ...) (NHWC for images); `y`: int labels (N,).

  Suites: 'aa_standard' (APGD-CE → APGD-T → FAB-T → Square), 'aa_rand'
  (APGD-CE → APGD-DLR with EOT over `eot_samples` = 20 draws), 'pgd'
  (PGD-`pgd_steps`-`pgd_restarts`, step `pgd_step_size`·ε), 'transfer'
  (`attacks`, default APGD-CE, computed on `surrogate` = (apply_fn, params,
  state) and scored on the model), 'custom' (`attacks`, names in `ATTACKS`).
  Each attack starts from the clean point and runs only on points still
  robust; a point is robust if it is classified correctly clean and under every
  attack (per-point worst case). Randomised models are scored over `n_draws`
  fresh draws per point: the mean per-draw accuracy with a 95% interval and the
  majority vote; the final number re-scores the chosen adversarial examples
  with fresh draws. `**options` are `SuiteOptions` fields.

  With `checks`, the sanity checks of `fat_jax.sanity` run too: FGSM and
  PGD-`check_pgd_steps` for the per-point order, PGD-2·`check_pgd_steps` with 2
  restarts against it (more iterations), and for a randomised model the suite's
  attacks on one frozen draw (and on the noise-free model of `with_input_noise`);
  `eps_sweep` adds APGD-CE with `sweep_steps` steps at ε ∈ {0, ε/2, ε, 2ε, 1}
  or the given values; `square_check` (default) runs a short Square
  (`sanity.SQUARE_CHECK_QUERIES` queries) after a suite without it;
  `eot_check_n` > 0 reruns a randomised model's suite with K = 100 on the first
  `eot_check_n` points. Same seed ⇒ same result.

  With a `mesh` (`fat_jax.parallel.make_data_mesh()`), every batch is split over its
  ``data`` axis (`batch_size` a multiple of its size) and the parameters are replicated:
  data parallelism over all devices (and processes), the same result as one device.

  Returns a JSON-ready report (see `save_report`) plus the arrays 'flags'
  (per-point 'clean' and 'robust'), 'scores' and 'x_adv'.
  """
  start = time.time()
  eps = float(eps)
  check_eps(eps)
  names = _suite_attacks(suite, attacks)
  x, y = _check_data(x, y)
  if mesh is not None:
    if batch_size % mesh.shape['data']:
      raise ValueError(f"batch_size={batch_size} cannot be split over the {mesh.shape['data']} "
                       "devices of the mesh's data axis: make it a multiple of the device count.")
    params, state = replicate((params, state), mesh)
    if surrogate is not None:
      surrogate = (surrogate[0], *replicate(tuple(surrogate[1:]), mesh))
  model = Classifier(apply_fn, params, state, randomized)
  attacker = _attacker(model, suite, surrogate)
  key = jax.random.key(seed)
  clean_key, fresh_key, check_key, attack_key = (jax.random.fold_in(key, i) for i in range(4))
  n_classes = int(jax.eval_shape(lambda: _logits_of(model, x[:1], clean_key)).shape[-1])
  validation.validate_evaluation(eps, x, y, n_classes)
  _check_compatible(names, randomized, n_classes)
  opts = _suite_options(suite, options, n_classes)
  run = _Run(model, x, y, eps, opts, batch_size, progress, mesh)

  t0 = time.time()
  clean = run.score(x, clean_key)
  passes = {'clean': {'forward': len(x) * run.draws(), 'backward': 0}}
  times = {'clean': time.time() - t0}
  scores, x_adv = clean.copy(), x.copy()
  by_attack, majority_by_attack = {}, {}
  for i, name in enumerate(names):
    t0 = time.time()
    forward, backward = run.attack(name, attacker, scores, x_adv, jax.random.fold_in(attack_key, i))
    times[name] = time.time() - t0
    passes[name] = {'forward': forward, 'backward': backward}
    by_attack[name] = float(scores.mean())
    majority_by_attack[name] = float(np.mean(scores > 0.5))

  final = run.score(x_adv, fresh_key) if randomized else scores
  report = {
      'suite': suite, 'attacks': list(names), 'norm': 'Linf', 'eps': eps, 'n': len(x),
      'seed': seed, 'randomized': randomized,
      'settings': {**dataclasses.asdict(opts), 'batch_size': batch_size, 'checks': checks,
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
        robust_accuracy_selected=float(scores.mean()))
  report['passes'] = passes
  if checks:
    t0 = time.time()
    report['checks'], passes['checks'] = _sanity_checks(
        run, names, suite, clean, scores, final, x_adv, by_attack, check_key,
        eps_sweep=eps_sweep, square_check=square_check, check_pgd_steps=check_pgd_steps,
        sweep_steps=sweep_steps, eot_check_n=eot_check_n)
    times['checks'] = time.time() - t0
  report['wall_time_s'] = time.time() - start
  log.info('%s', format_table(report))
  for name, check in report.get('checks', {}).items():
    if check['status'] == sanity.WARN:
      log.warning('check %s: %s', name, check['message'])
  report.update(flags={'clean': clean > 0.5, 'robust': final > 0.5}, scores=final, x_adv=x_adv)
  return report


def _logits_of(model: Classifier, x, key):
  return randomized_logits(model.apply_fn, model.params, model.state, x, key,
                           randomized=model.randomized)[0]


def _probe(run: _Run, key):
  """Clean logits and zero-gradient flags of all points, and the same logits again."""
  m, logits, again, zero = run.model, [], [], []
  for b, (chunk, size) in enumerate(run.batches(np.arange(len(run.x)))):
    xb, yb = run.put(_pad(run.x[chunk], size), _pad(run.y[chunk], size))
    k = jax.random.fold_in(key, b)
    first, z = probe_batch(m.params, m.state, xb, yb, k, apply_fn=m.apply_fn,
                           randomized=m.randomized)
    second, _ = probe_batch(m.params, m.state, xb, yb, k, apply_fn=m.apply_fn,
                            randomized=m.randomized)
    logits.append(to_host(first)[:len(chunk)])
    again.append(to_host(second)[:len(chunk)])
    zero.append(to_host(z)[:len(chunk)])
  return np.concatenate(logits), np.concatenate(again), np.concatenate(zero)


def _sanity_checks(run: _Run, names, suite, clean, scores, final, x_adv, by_attack, key, *,
                   eps_sweep, square_check, check_pgd_steps, sweep_steps, eot_check_n):
  """The checks of `fat_jax.sanity` for one evaluation, and their forward/backward passes.

  The extra attacks (FGSM, PGD, Square, ε sweep, frozen noise, EOT with K = 100) run
  white-box from the clean points and do not change the suite's result.
  """
  n, draws, randomized = len(run.x), run.draws(), run.model.randomized
  keys = {name: jax.random.fold_in(key, i) for i, name in enumerate((
      'rescore', 'fgsm', 'pgd', 'square', 'sweep', 'probe', 'draw', 'frozen_draw', 'frozen',
      'noise_free', 'eot', 'eot_rescore'))}
  counts = {'forward': 0, 'backward': 0}

  def side_attacks(scorer: _Run, attack_names, start_scores, k, **kw):
    """`attack_names` in turn on `scorer.model` (per-point worst case): scores and x_adv."""
    s, xa = start_scores.copy(), scorer.x.copy()
    for i, name in enumerate(attack_names):
      f, b = scorer.attack(name, scorer.model, s, xa, jax.random.fold_in(k, i), **kw)
      counts['forward'] += f
      counts['backward'] += b
    return s, xa

  def side_attack(name, start_scores, k, **kw):
    return side_attacks(run, (name,), start_scores, k, **kw)[0]

  def clean_scores(scorer: _Run, k):
    counts['forward'] += len(scorer.x) * scorer.draws()
    return scorer.score(scorer.x, k)

  checks = {'validity': sanity.check_validity(run.x, x_adv, run.eps)}
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
        float(strong.mean()), int(np.sum((strong > 0.5) & (weak < 0.5))))
    pgd = scores if names == ('pgd',) else weak
    levels.append(('pgd', pgd > 0.5))
    checks['fgsm_pgd_gap'] = sanity.check_fgsm_pgd_gap(float(fgsm.mean()), float(pgd.mean()))
    if suite not in ('pgd', 'transfer'):
      levels.append((suite, final > 0.5))
  checks['ordering'] = sanity.check_ordering(levels)

  if 'square' in names[1:] and suite != 'transfer':
    before = list(by_attack.values())[names.index('square') - 1]
    checks['square'] = sanity.check_square(before, by_attack['square'])
  elif square_check and 'square' not in names and suite != 'transfer' and not randomized:
    short = dataclasses.replace(run.options, square_queries=min(run.options.square_queries,
                                                                 sanity.SQUARE_CHECK_QUERIES))
    checks['square'] = sanity.check_square(float(final.mean()), float(
        side_attack('square', final, keys['square'], options=short).mean()))
  else:
    checks['square'] = sanity.skipped(
        'Square needs a deterministic model and white-box attacks before it' if 'square' in names
        or randomized or suite == 'transfer' else
        'the suite has no Square attack (square_check=True runs it)')
  checks['gradient_free'] = sanity.check_gradient_free(checks['square'])

  if eps_sweep:
    values = sorted(set(eps_sweep if not isinstance(eps_sweep, bool) else
                        [min(f * run.eps, 1.0) for f in SWEEP_FRACTIONS] + [1.0]))
    sweep_options = dataclasses.replace(run.options, apgd_steps=sweep_steps, apgd_restarts=1)
    accuracies = [float(side_attack('apgd-ce', clean, jax.random.fold_in(keys['sweep'], i),
                                    eps=e, options=sweep_options).mean())
                  for i, e in enumerate(values)]
    checks['eps_sweep'] = sanity.check_eps_sweep(values, accuracies)
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

  logits, logits_again, zero = _probe(run, keys['probe'])
  counts['forward'] += 2 * n
  counts['backward'] += 2 * n
  checks['logits'] = sanity.check_logits(logits)
  checks['zero_gradients'] = sanity.check_zero_gradients(zero)
  draw_change = None
  if randomized:
    other, _, _ = _probe(run, keys['draw'])
    draw_change = float(np.abs(other - logits).max())
    counts['forward'] += 2 * n
    counts['backward'] += 2 * n
  checks['determinism'] = sanity.check_determinism(float(np.abs(logits_again - logits).max()),
                                                   randomized, draw_change)
  return checks, counts


def format_table(report: dict) -> str:
  """The console table of a report: accuracy after each attack, time, passes per point."""
  n = report['n']
  rows = [('clean', report['clean_accuracy'])] + list(report['robust_accuracy_by_attack'].items())
  lines = [f"suite {report['suite']}  eps {report['eps']:.5f}  n {n}  seed {report['seed']}",
           f"{'attack':<10} {'accuracy':>9} {'time (s)':>9} {'fwd/pt':>8} {'bwd/pt':>8}"]
  for name, acc in rows:
    p = report['passes'][name]
    lines.append(f"{name:<10} {acc:>9.4f} {report['time_by_attack_s'][name]:>9.1f} "
                 f"{p['forward'] / n:>8.1f} {p['backward'] / n:>8.1f}")
  final = f"robust accuracy {report['robust_accuracy']:.4f}"
  if report['randomized']:
    lo, hi = report['robust_accuracy_ci95']
    final += (f" (95% [{lo:.4f}, {hi:.4f}], {report['n_draws']} fresh draws; majority vote "
              f"{report['robust_majority_accuracy']:.4f})")
  lines.append(final + f"  wall {report['wall_time_s']:.1f} s")
  for name, check in report.get('checks', {}).items():
    lines.append(f"check {name:<15} {check['status']:<8} {check['message']}")
  return '\n'.join(lines)


def save_report(report: dict, path: str) -> str:
  """Writes the JSON part of `report` (without the per-point arrays) to `path`."""
  content = {k: v for k, v in report.items() if k not in ('flags', 'scores', 'x_adv')}
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(content, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path


def restore_model(model_config, info, workdir: str, epoch: int = 0):
  """(model, train state, epoch): `build_model(model_config, info)` and its checkpoint
  `epoch` (0 = the latest) of the run in `workdir`."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'No checkpoints in {workdir}: train there first '
                            '(python launch.py --mode=train ...).')
  model = build_model(model_config, info)
  checkpointer = Checkpointer(workdir)
  try:
    epoch = epoch or checkpointer.latest_verified_epoch()
    if epoch is None or epoch not in checkpointer.epochs():
      raise FileNotFoundError(f'No checkpoint of epoch {epoch} in {workdir} (have '
                              f'{checkpointer.epochs()}).')
    # The shapes of a fresh state suffice (eval_shape: no initialisation is compiled or run).
    like = jax.eval_shape(lambda: init_train_state(model, jax.random.key(0)))
    return model, checkpointer.restore(epoch, like), epoch
  finally:
    checkpointer.close()


def evaluate_checkpoint(config, workdir: str) -> dict:
  """`evaluate` on a checkpoint of the run in `workdir` with the suite of `config.eval`.

  Uses the first `eval.n` test points, ε = `eval.eps` (None: the training ε),
  the `SuiteOptions` fields found in `config.eval`, `eval.input_noise` > 0 for
  the randomised model f(x + r) (`eval.noise_kind`), and for 'transfer' the
  latest checkpoint of `eval.surrogate_workdir` (its own config.json).
  Writes ``eval_<suite>.json`` and the per-point flags ``eval_<suite>_flags.npz``.
  """
  workdir = os.path.abspath(workdir)
  e = config.eval
  data = load_dataset(config.data)
  model, ts, epoch = restore_model(config.model, data.info, workdir, e.epoch)
  n = e.n or len(data.test_images)
  x = data.test_images[:n].astype(np.float32) / 255.0
  surrogate = None
  if e.suite == 'transfer':
    stored = run_log.read_json(e.surrogate_workdir, run_log.CONFIG) if e.surrogate_workdir \
        else None
    if stored is None:
      raise FileNotFoundError(f"suite 'transfer' needs eval.surrogate_workdir, a run directory "
                              f'with config.json and checkpoints; got {e.surrogate_workdir!r}.')
    other, other_ts, _ = restore_model(ml_collections.ConfigDict(stored['model']), data.info,
                                       e.surrogate_workdir)
    surrogate = (other.apply, other_ts.params, other_ts.batch_stats)
  apply_fn = (with_input_noise(model.apply, e.input_noise, e.noise_kind, e.noise_clip)
              if e.input_noise else model.apply)
  options = {f.name: e[f.name] for f in dataclasses.fields(SuiteOptions)
             if e.get(f.name) is not None}
  report = evaluate(apply_fn, ts.params, ts.batch_stats, x, data.test_labels[:n], suite=e.suite,
                    eps=e.eps if e.eps is not None else config.eps, seed=config.seed,
                    attacks=tuple(e.attacks) or None, surrogate=surrogate,
                    randomized=bool(e.input_noise), batch_size=e.batch_size, checks=e.checks,
                    eps_sweep=e.eps_sweep, square_check=e.square_check,
                    check_pgd_steps=e.check_pgd_steps, eot_check_n=e.eot_check_n,
                    progress=config.progress, mesh=make_data_mesh(), **options)
  report.update(evaluated_epoch=epoch, method=config.method.name, dataset=config.data.name,
                model=config.model.name, workdir=workdir)
  if is_writer():
    save_report(report, os.path.join(workdir, f'eval_{e.suite}.json'))
  run_log.write_arrays(workdir, f'eval_{e.suite}_flags.npz', report['flags'])
  return report
