"""Feature-activation-difference analysis of a model (docs/protocol.md §2.4; Zhao, Zhang, Kong,
Yin, "Catastrophic Overfitting: A Potential Blessing in Disguise", ECCV 2024; no official code).

* `activation_statistics`: over a data set, V_act per node, T_act per node and
  channel (`fat_jax.losses.feature_diff`), and the variance of each channel's
  adversarial activations.
* T_act's normaliser (`TACT_REDUCTIONS`, config `analysis.tact_reduction`):
  'example_mean' (default) tanh(a · Σ_x ‖M_k(x) − M_k(x + δ)‖² / (|D|·H·W)), the
  per-example mean of the channel's squared difference summed over positions;
  'eq6' tanh(a · Σ_x ‖·‖² / (N·H·W)) with N = channels and the sum over the data
  set, Eq. 6 exactly as written (it grows with |D|). docs/feature_difference.md
  shows why the default is 'example_mean' (the paper's Fig. 3 pattern).
* `threshold_masks` (Eq. 7: zero channel k of node i when T_act^{i,k} > α2) and
  `variance_masks` (the same number of channels with the largest variance, the
  comparison); masks are keep-masks (1 = keep) for ``Model.apply(..., masks=)``.
* `masking_study`: clean and adversarial accuracy of the masked model for each
  node and α2, T_act selection next to variance selection (the paper's Fig. 4).
* `analyze_run`: all of it for a run's checkpoint (``launch.py --mode=analyze``),
  written to ``analysis.json`` and ``tact.npz`` (the input of `induce_co`).

Choices (the paper leaves them open):
* δ of V_act/T_act: zero-init FGSM with α = ε ('fgsm', the single-step example
  a CO model overfits to; the paper measures its training adversarial examples)
  or PGD ('pgd'); evaluation-mode BatchNorm.
* T_act is computed on training points and the masks are evaluated on test
  points, so no channel is chosen on the points it is scored on.
* The masked model masks every input, clean and adversarial. Its adversarial
  accuracy is measured (a) on FGSM and PGD examples of the unmasked model (the
  examples the masks are meant to neutralise) and (b) with PGD on the masked
  model itself (adaptive: is the masked model robust, or only the examples
  stale?). A point counts as robust only if it is also classified correctly
  clean (the library's per-point rule).
* T_act = tanh(·) ≤ 1, so α2 = 1.0 masks nothing: the unmasked reference.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks import fgsm_attack, per_example, pgd_attack
from fat_jax.losses import accuracy
from fat_jax.methods import evaluated_weights
from fat_jax.run import run_log
from fat_jax.losses.feature_diff import (TACT_SCALE, channel_saliency, channel_squared_difference,
                                         feature_distance)
from fat_jax.run.runs import Run

log = logging.getLogger('fat_jax')

ATTACKS = ('fgsm', 'pgd')
ALPHA2 = (1.0, 0.99, 0.5, 0.1)
TACT_REDUCTIONS = ('example_mean', 'eq6')
ANALYSIS = 'analysis.json'
TACT = 'tact.npz'


def _perturbation(apply_fn, params, state, x, y, key, *, attack: str, eps: float,
                  pgd_steps: int):
  """δ of zero-init FGSM (α = ε) or PGD-`pgd_steps` (step ε/4, one restart), eval mode."""
  if attack == 'fgsm':
    return fgsm_attack(apply_fn, params, state, x, y, key, eps=eps, alpha=eps, train=False).delta
  return pgd_attack(apply_fn, params, state, x, y, key, eps=eps, alpha=eps / 4,
                    steps=pgd_steps).delta


@functools.partial(jax.jit, static_argnames=('apply_fn', 'attack', 'eps', 'pgd_steps'))
def _statistics_batch(params, state, x, y, weight, key, *, apply_fn, attack, eps, pgd_steps):
  """Per node: Σ_n w_n‖M(x_n) − M(x_n + δ_n)‖₂, and per channel Σ w·(M(x) − M(x + δ))²,
  Σ w·M(x + δ), Σ w·M(x + δ)² over examples and positions (w = 0 on padding rows)."""
  delta = _perturbation(apply_fn, params, state, x, y, key, attack=attack, eps=eps,
                        pgd_steps=pgd_steps)
  _, _, clean = apply_fn(params, state, x, False)
  _, _, adv = apply_fn(params, state, x + delta, False)
  out = {}
  for node in clean:
    w = per_example(weight, clean[node])
    a, b = clean[node] * w, adv[node] * w
    axes = tuple(range(b.ndim - 1))
    out[node] = {'distance': jnp.sum(weight * feature_distance(a, b)),
                 'squared_difference': channel_squared_difference(a, b),
                 'sum': jnp.sum(b, axis=axes), 'square_sum': jnp.sum(b * b, axis=axes)}
  return out


def _padded_batches(n: int, batch_size: int):
  """(rows, weights) per batch: indices padded to `batch_size` by repeating the last row."""
  for lo in range(0, n, batch_size):
    rows = np.arange(lo, min(lo + batch_size, n))
    weight = np.ones(batch_size, np.float32)
    weight[len(rows):] = 0.0
    yield np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])]), weight


def _check_points(x, y) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  if x.shape[:1] != y.shape or not len(x):
    raise ValueError(f'x {x.shape} and y {y.shape} must hold the same, non-zero number of points.')
  if x.min() < 0 or x.max() > 1:
    raise ValueError(f'x must be in pixel space [0, 1] (got [{x.min():.3g}, {x.max():.3g}]).')
  return x, y


def _check_reduction(reduction: str) -> None:
  if reduction not in TACT_REDUCTIONS:
    raise ValueError(f'Unknown T_act reduction {reduction!r}; known: {TACT_REDUCTIONS} '
                     '(analysis.tact_reduction).')


def tact_count(reduction: str, num_examples: int, shape: tuple[int, ...]) -> int:
  """The divisor of T_act's Σ_x ‖M_k(x) − M_k(x + δ)‖² for a node of per-example `shape`
  (H, W, C) or (C,): |D|·H·W ('example_mean') or C·H·W ('eq6', Eq. 6 as written)."""
  _check_reduction(reduction)
  spatial = int(np.prod(shape[:-1]))
  return spatial * (num_examples if reduction == 'example_mean' else int(shape[-1]))


def activation_statistics(apply_fn, params, state, x, y, *, eps: float, attack: str = 'fgsm',
                          scale: float = TACT_SCALE, pgd_steps: int = 10,
                          batch_size: int = 256, seed: int = 0,
                          tact_reduction: str = 'example_mean') -> dict:
  """V_act, T_act and channel variances of `apply_fn`'s feature nodes over (x, y).

  `x` float in [0, 1] (N, H, W, C), `y` labels; δ from `attack` ('fgsm' or
  'pgd', see the module doc) with radius `eps`; batch b uses the key
  ``fold_in(key(seed), b)``. Returns {'vact': {node: V_act}, 'tact': {node:
  (C,) T_act with `tact_reduction`'s normaliser (`tact_count`)},
  'mean_squared_difference': {node: (C,) Σ‖·‖²/(|D|·H·W), the mean over examples and
  positions, which does not saturate}, 'variance': {node: (C,) variance of
  M_k(x + δ) over examples and positions}, 'n', 'attack', 'eps', 'scale',
  'tact_reduction'}. At radii well above CIFAR's 8/255, a = 100 can
  saturate T_act at 1 for most channels (the log shows it): lower `scale`.
  """
  if attack not in ATTACKS:
    raise ValueError(f'Unknown attack {attack!r}; known: {ATTACKS}.')
  _check_reduction(tact_reduction)
  x, y = _check_points(x, y)
  sums, positions, counts = None, {}, {}
  for b, (rows, weight) in enumerate(_padded_batches(len(x), batch_size)):
    out = _statistics_batch(params, state, x[rows], y[rows], weight,
                            jax.random.fold_in(jax.random.key(seed), b), apply_fn=apply_fn,
                            attack=attack, eps=float(eps), pgd_steps=pgd_steps)
    out = jax.tree.map(lambda v: np.asarray(v, np.float64), out)
    sums = out if sums is None else jax.tree.map(np.add, sums, out)
  if not sums:
    raise ValueError('The model returns no feature nodes; V_act and T_act need them.')
  shapes = jax.eval_shape(lambda: apply_fn(params, state, x[:1], False)[2])
  for node, shape in shapes.items():
    positions[node] = len(x) * int(np.prod(shape.shape[1:-1]))
    counts[node] = tact_count(tact_reduction, len(x), shape.shape[1:])
  tact, variance, msd = {}, {}, {}
  for node, s in sums.items():
    msd[node] = s['squared_difference'] / positions[node]
    tact[node] = np.asarray(channel_saliency(s['squared_difference'], counts[node],
                                             scale=scale), np.float64)
    mean = s['sum'] / positions[node]
    variance[node] = np.maximum(s['square_sum'] / positions[node] - mean * mean, 0.0)
  return {'vact': {node: float(s['distance'] / len(x)) for node, s in sums.items()},
          'tact': tact, 'mean_squared_difference': msd, 'variance': variance, 'n': len(x),
          'attack': attack, 'eps': float(eps), 'scale': scale, 'tact_reduction': tact_reduction}


def threshold_masks(tact: np.ndarray, alpha2: float) -> np.ndarray:
  """Keep-mask (C,) of Eq. 7: 0 where T_act > α2, 1 elsewhere."""
  return (np.asarray(tact) <= alpha2).astype(np.float32)


def variance_masks(variance: np.ndarray, count: int) -> np.ndarray:
  """Keep-mask (C,) zeroing the `count` channels of largest variance (ties: lower index)."""
  mask = np.ones(len(variance), np.float32)
  mask[np.argsort(-np.asarray(variance), kind='stable')[:count]] = 0.0
  return mask


@functools.partial(jax.jit, static_argnames=('apply_fn', 'eps', 'pgd_steps'))
def _masked_batch(params, state, x, y, fgsm_delta, pgd_delta, masks, key, *, apply_fn, eps,
                  pgd_steps):
  """Per example: correct clean, and robust to the given FGSM / PGD δ and to PGD on the
  masked model itself."""
  masked = lambda p, s, xa, train: apply_fn(p, s, xa, train, masks=masks)
  correct = lambda xa: accuracy(masked(params, state, xa, False)[0], y)
  clean = correct(x)
  adaptive = pgd_attack(masked, params, state, x, y, key, eps=eps, alpha=eps / 4,
                        steps=pgd_steps).delta
  return {'clean': clean, 'fgsm': clean * correct(x + fgsm_delta),
          'pgd': clean * correct(x + pgd_delta), 'pgd_adaptive': clean * correct(x + adaptive)}


@functools.partial(jax.jit, static_argnames=('apply_fn', 'eps', 'pgd_steps'))
def _unmasked_deltas(params, state, x, y, key, *, apply_fn, eps, pgd_steps):
  fgsm_key, pgd_key = jax.random.split(key)
  return (_perturbation(apply_fn, params, state, x, y, fgsm_key, attack='fgsm', eps=eps,
                        pgd_steps=pgd_steps),
          _perturbation(apply_fn, params, state, x, y, pgd_key, attack='pgd', eps=eps,
                        pgd_steps=pgd_steps))


def masked_accuracy(apply_fn, params, state, x, y, masks: dict, *, eps: float,
                    pgd_steps: int = 10, batch_size: int = 256, seed: int = 0) -> dict:
  """Clean / FGSM / PGD / adaptive-PGD accuracy of ``apply_fn(..., masks=masks)`` on (x, y).

  FGSM (zero init, α = ε) and PGD-`pgd_steps` (step ε/4) examples are computed
  on the unmasked model; 'pgd_adaptive' runs the same PGD on the masked model.
  Same seed ⇒ the same examples for every mask.
  """
  return _masked_accuracies(apply_fn, params, state, *_check_points(x, y), [masks], eps=eps,
                            pgd_steps=pgd_steps, batch_size=batch_size, seed=seed)[0]


def _masked_accuracies(apply_fn, params, state, x, y, mask_sets, *, eps, pgd_steps, batch_size,
                       seed) -> list[dict]:
  key = jax.random.key(seed)
  totals = [dict.fromkeys(('clean', 'fgsm', 'pgd', 'pgd_adaptive'), 0.0) for _ in mask_sets]
  for b, (rows, weight) in enumerate(_padded_batches(len(x), batch_size)):
    xb, yb, k = x[rows], y[rows], jax.random.fold_in(key, b)
    fgsm_delta, pgd_delta = _unmasked_deltas(params, state, xb, yb, k, apply_fn=apply_fn,
                                             eps=float(eps), pgd_steps=pgd_steps)
    for masks, total in zip(mask_sets, totals):
      out = _masked_batch(params, state, xb, yb, fgsm_delta, pgd_delta, masks,
                          jax.random.fold_in(k, 1), apply_fn=apply_fn, eps=float(eps),
                          pgd_steps=pgd_steps)
      for name, v in out.items():
        total[name] += float(np.sum(np.asarray(v) * weight))
  return [{name: v / len(x) for name, v in total.items()} for total in totals]


def masking_study(apply_fn, params, state, x, y, tact: dict, variance: dict, *, eps: float,
                  alphas=ALPHA2, pgd_steps: int = 10, batch_size: int = 256,
                  seed: int = 0) -> list[dict]:
  """Fig. 4 of the paper: for each node and α2, mask the channels with T_act > α2, and as
  the comparison the same number of channels of largest variance; accuracies of each
  masked model (`masked_accuracy`) on (x, y).

  Rows: {'node', 'alpha2', 'selection' ('tact' | 'variance'), 'channels' (masked
  indices), 'clean', 'fgsm', 'pgd', 'pgd_adaptive'}. A node is masked alone; the
  other nodes pass unchanged. Identical masks are evaluated once.
  """
  x, y = _check_points(x, y)
  ones = {node: np.ones(len(t), np.float32) for node, t in tact.items()}
  plans = []
  for node in tact:
    for alpha2 in alphas:
      by_tact = threshold_masks(tact[node], alpha2)
      count = int(np.sum(by_tact == 0))
      for selection, keep in (('tact', by_tact), ('variance', variance_masks(variance[node],
                                                                             count))):
        plans.append({'node': node, 'alpha2': float(alpha2), 'selection': selection,
                      'channels': [int(k) for k in np.flatnonzero(keep == 0)], 'keep': keep})
  key_of = lambda plan: (plan['node'], tuple(plan['channels'])) if plan['channels'] else ()
  unique = {}
  for plan in plans:
    unique.setdefault(key_of(plan), {**ones, plan['node']: plan['keep']})
  keys = list(unique)
  results = dict(zip(keys, _masked_accuracies(apply_fn, params, state, x, y,
                                              [unique[k] for k in keys], eps=eps,
                                              pgd_steps=pgd_steps, batch_size=batch_size,
                                              seed=seed)))
  return [{**{k: v for k, v in plan.items() if k != 'keep'}, **results[key_of(plan)]}
          for plan in plans]


def format_masking_table(rows: list[dict]) -> str:
  """The masking study as a Markdown table: T_act selection next to variance selection."""
  lines = ['| node | α2 | masked | clean | FGSM | PGD | PGD (adaptive) | '
           'variance: clean | FGSM | PGD | PGD (adaptive) |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  by_key = {(r['node'], r['alpha2'], r['selection']): r for r in rows}
  for r in rows:
    if r['selection'] != 'tact':
      continue
    v = by_key[(r['node'], r['alpha2'], 'variance')]
    cells = [f"{s[k]:.3f}" for s in (r, v) for k in ('clean', 'fgsm', 'pgd', 'pgd_adaptive')]
    lines.append(f"| {r['node']} | {r['alpha2']:g} | {len(r['channels'])} | " +
                 ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def format_statistics(stats: dict, num_top: int = 5) -> str:
  """V_act per node and the largest T_act values, one line per node."""
  lines = [f"V_act and T_act ({stats['attack']} δ, ε = {stats['eps']:.4g}, n = {stats['n']}, "
           f"a = {stats['scale']:g}, {stats['tact_reduction']})"]
  for node, vact in stats['vact'].items():
    t = np.sort(stats['tact'][node])[::-1]
    top = ' '.join(f'{v:.3f}' for v in t[:num_top])
    lines.append(f'node {node}: V_act {vact:.4g}; largest T_act {top}; '
                 f'T_act > 0.5 in {int(np.sum(t > 0.5))}/{len(t)} channels')
  return '\n'.join(lines)


def _jsonable(stats: dict) -> dict:
  return {k: ({n: np.asarray(a).tolist() for n, a in v.items()}
              if k in ('tact', 'mean_squared_difference', 'variance') else v)
          for k, v in stats.items()}


def analyze_run(run: Run) -> dict:
  """`activation_statistics` on training points and `masking_study` on test points for the
  checkpoint `eval.epoch` (0 = latest) of `run` (``launch.py --mode=analyze``).

  Settings from `config.analysis`; ε = `eval.eps` (None: the training ε). Writes
  ``analysis.json`` (settings, V_act, T_act, variances, the masking rows) and
  ``tact.npz`` (node → T_act, for ``method.co.tact_file``).
  """
  config = run.config
  a = config.analysis
  model, ts, epoch = run.restore(config.eval.epoch)
  weights, params = evaluated_weights(ts)
  eps = run.eval_eps
  x_train, y_train = run.points('train', a.n_train)
  x_test, y_test = run.points('test', a.n)
  n_train, n_test = len(y_train), len(y_test)
  stats = activation_statistics(model.apply, params, ts.batch_stats, x_train, y_train, eps=eps,
                                attack=a.attack, scale=a.tact_scale, pgd_steps=a.pgd_steps,
                                batch_size=a.batch_size, seed=config.seed,
                                tact_reduction=a.tact_reduction)
  log.info('%s', format_statistics(stats))
  rows = masking_study(model.apply, params, ts.batch_stats, x_test, y_test, stats['tact'],
                       stats['variance'], eps=eps, alphas=tuple(a.alpha2),
                       pgd_steps=a.pgd_steps, batch_size=a.batch_size, seed=config.seed)
  log.info('Channel masking (T_act on %d training points, accuracies on %d test points, '
           'PGD-%d step ε/4):\n%s', n_train, n_test, a.pgd_steps, format_masking_table(rows))
  report = {'workdir': run.workdir, 'evaluated_epoch': epoch, 'evaluated_weights': weights,
            'method': config.method.name,
            'dataset': config.data.name, 'model': config.model.name,
            'settings': {**a.to_dict(), 'alpha2': list(a.alpha2), 'n_train': n_train, 'n': n_test,
                         'eps': eps, 'seed': config.seed},
            'train_statistics': _jsonable(stats), 'masking': rows}
  run_log.write_json(run.workdir, ANALYSIS, report)
  run_log.write_arrays(run.workdir, TACT, stats['tact'])
  return report
