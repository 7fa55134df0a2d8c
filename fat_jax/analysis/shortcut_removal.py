"""LAP's shortcut removal: FGSM and PGD accuracy of a checkpoint as weights of its former or its
latter layers are removed (set to zero).

Lin et al., "Layer-Aware Analysis of Catastrophic Overfitting: Revealing the Pseudo-Robust
Shortcut Dependency" (ICML 2024, arXiv 2405.16262) attribute catastrophic overfitting to
*pseudo-robust shortcuts* formed in the former layers, which defend against single-step attacks
alone, and support it by eliminating them from a CO model: removing large weights of the former
layers lowers FGSM accuracy and partially restores PGD accuracy, while removing those of the
latter layers does not. The official repository (`tmllab/2024_ICML_LAP`) holds the training code
only, so the procedure here is a reading of the paper with its open details as settings
(`config.shortcuts`, docs/cifar_study.md):

* layers: the conv/linear kernels in the LAP layer order l = 1..L
  (`Model.weight_layer_order`); former = `former` (default l = 1..5), latter = `latter`
  (default the last five conv kernels, l = L−5..L−1; negative indices count from the end, −1 is
  the classifier). BatchNorm parameters and biases are never removed.
* criterion: 'largest' (the weights of largest |w|, the paper's), 'random' (uniform, a control
  of the same count) or 'smallest' (a second control).
* scope: 'layer' removes the fraction of each kernel; 'group' the fraction of the group's
  weights pooled, by one ranking over them.
* the checkpoint's BatchNorm running statistics are kept (no recalibration).

Exactly round(fraction · n) weights go (ties broken by position), so the fractions are exact.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.reports import figures

from fat_jax.config import default_config
from fat_jax.evaluate import PGDSettings, evaluate_robustness
from fat_jax.methods import evaluated_weights
from fat_jax.parallel import make_data_mesh
from fat_jax.run import run_log
from fat_jax.run.runs import Run
from fat_jax.weight_perturbation import leaf_at, with_leaf

log = logging.getLogger('fat_jax')

Path = tuple[str, ...]
CRITERIA = ('largest', 'random', 'smallest')
SCOPES = ('layer', 'group')
GROUPS = ('former', 'latter')
REPORT = 'shortcuts.json'
FIGURE = 'shortcuts.png'
METRICS = ('clean', 'fgsm', 'pgd')


def layer_paths(order: Sequence[Path], indices: Sequence[int]) -> list[Path]:
  """The kernels at 1-based `indices` of the LAP layer `order` (negative: −1 is the last)."""
  n = len(order)
  bad = [i for i in indices if not (1 <= i <= n or -n <= i <= -1)]
  if bad or not indices:
    raise ValueError(f'Layer indices must be in 1..{n} or -{n}..-1 (the LAP layer order of '
                     f'{n} kernels), got {list(indices)}.')
  return [order[i - 1 if i > 0 else n + i] for i in indices]


def _scores(weights: np.ndarray, criterion: str, key) -> np.ndarray:
  """Removal order key: the weights with the smallest scores go first."""
  if criterion == 'largest':
    return -np.abs(weights)
  if criterion == 'smallest':
    return np.abs(weights)
  return np.asarray(jax.random.uniform(key, weights.shape))


def removal_masks(kernels: Sequence, fraction: float, *, criterion: str = 'largest',
                  scope: str = 'layer', key=None) -> list[np.ndarray]:
  """Boolean masks (True = removed) of round(fraction · n) weights of each kernel (scope
  'layer'), or of the n weights of all `kernels` pooled (scope 'group'), picked by `criterion`
  (`CRITERIA`; 'random' draws from `key`, folded with the kernel's position for 'layer')."""
  if criterion not in CRITERIA or scope not in SCOPES:
    raise ValueError(f'criterion must be one of {CRITERIA} and scope one of {SCOPES}, got '
                     f'{criterion!r}, {scope!r}.')
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'The fraction removed must be in [0, 1], got {fraction}.')
  if criterion == 'random' and key is None:
    raise ValueError("criterion 'random' needs a key.")
  flat = [np.asarray(k, np.float64).ravel() for k in kernels]

  def mask(values: np.ndarray, k) -> np.ndarray:
    out = np.zeros(values.size, bool)
    order = np.argsort(_scores(values, criterion, k), kind='stable')
    out[order[:round(fraction * values.size)]] = True
    return out

  if scope == 'layer':
    masks = [mask(v, None if key is None else jax.random.fold_in(key, i))
             for i, v in enumerate(flat)]
  else:
    pooled = mask(np.concatenate(flat), key)
    masks = np.split(pooled, np.cumsum([v.size for v in flat])[:-1])
  return [m.reshape(np.shape(k)) for m, k in zip(masks, kernels)]


def remove_weights(params, paths: Sequence[Path], fraction: float, *, criterion: str = 'largest',
                   scope: str = 'layer', key=None):
  """`params` with the weights that `removal_masks` picks in the kernels at `paths` set to 0;
  every other leaf (and every other weight of those kernels) is returned unchanged."""
  kernels = [leaf_at(params, p) for p in paths]
  masks = removal_masks(kernels, fraction, criterion=criterion, scope=scope, key=key)
  for path, kernel, mask in zip(paths, kernels, masks):
    params = with_leaf(params, path, jnp.where(mask, jnp.zeros_like(kernel), kernel))
  return params


def shortcut_removal_run(run: Run) -> dict:
  """Clean, FGSM and PGD accuracy of checkpoint `eval.epoch` (0 = latest) of `run` with each
  fraction of `shortcuts.fractions` removed from the former and from the latter layers, by
  each of `shortcuts.criteria` (``launch.py --mode=shortcuts``).

  First `shortcuts.n` test points, ε = `eval.eps` (None: the training ε), FGSM (zero init,
  α = ε) and PGD-`shortcuts.pgd_steps` (step ε/4, `shortcuts.pgd_restarts` restarts) in
  evaluation mode, as the training monitor measures them. Writes ``shortcuts.json`` (settings,
  layer names, one row per criterion, group and fraction) and ``shortcuts.png``. A config
  without the `shortcuts` section (a run stored before it existed) uses the defaults."""
  config = run.config
  # A config.json written before `shortcuts` existed: the defaults.
  s = config.get('shortcuts') or default_config().shortcuts
  model, ts, epoch = run.restore(config.eval.epoch)
  weights, params = evaluated_weights(ts)
  order = model.weight_layer_order(params)
  groups = {'former': layer_paths(order, s.former), 'latter': layer_paths(order, s.latter)}
  images, labels = run.data.test_subset(s.n)
  settings = PGDSettings(eps=run.eval_eps, steps=int(s.pgd_steps), restarts=int(s.pgd_restarts))
  mesh = make_data_mesh()

  def measure(p) -> dict:
    r = evaluate_robustness(model, p, ts.batch_stats, images, labels, settings, mesh=mesh,
                            batch_size=config.eval.batch_size, seed=config.seed,
                            desc='shortcuts', progress=config.progress)
    return {m: r[f'{m}_accuracy'] for m in METRICS}

  base = measure(params)
  key = jax.random.key(config.seed)
  rows = []
  for c, criterion in enumerate(s.criteria):
    for g, (group, paths) in enumerate(groups.items()):
      total = sum(int(np.size(leaf_at(params, p))) for p in paths)
      for fraction in s.fractions:
        accuracies = base if fraction == 0 else measure(remove_weights(
            params, paths, fraction, criterion=criterion, scope=s.scope,
            key=jax.random.fold_in(key, 2 * c + g)))
        rows.append({'criterion': criterion, 'group': group, 'fraction': float(fraction),
                     'removed': _removed(params, paths, fraction, s.scope), 'of': total,
                     **accuracies})
        log.info('%s %s %.3f removed: clean %.3f  FGSM %.3f  PGD %.3f', criterion, group,
                 fraction, accuracies['clean'], accuracies['fgsm'], accuracies['pgd'])
  report = {'workdir': run.workdir, 'evaluated_epoch': epoch, 'evaluated_weights': weights,
            'method': config.method.name, 'dataset': config.data.name,
            'model': config.model.name,
            'settings': {**s.to_dict(), 'former': list(s.former), 'latter': list(s.latter),
                         'fractions': list(s.fractions), 'criteria': list(s.criteria),
                         'n': len(labels), 'eps': settings.eps, 'seed': config.seed},
            'layers': {group: ['/'.join(p) for p in paths] for group, paths in groups.items()},
            'layer_indices': {group: [order.index(p) + 1 for p in paths]
                              for group, paths in groups.items()},
            'num_layers': len(order), 'rows': rows}
  run_log.write_json(run.workdir, REPORT, report)
  plot_shortcut_removal(report, os.path.join(run.workdir, FIGURE))
  return report


def _removed(params, paths, fraction: float, scope: str) -> int:
  sizes = [int(np.size(leaf_at(params, p))) for p in paths]
  return round(fraction * sum(sizes)) if scope == 'group' else sum(round(fraction * n)
                                                                   for n in sizes)


LINE_STYLES = {'largest': '-', 'random': '--', 'smallest': ':'}
METRIC_STYLE = {'clean': ('tab:blue', 'clean'), 'fgsm': ('tab:orange', 'FGSM'),
                'pgd': ('tab:red', 'PGD')}


def plot_shortcut_removal(report: dict, path: str) -> str:
  """Two panels (former, latter layers): clean, FGSM and PGD accuracy against the percentage
  of weights removed, one line style per criterion."""
  fig = figures.new_figure(7.0, 3.0)
  axes = fig.subplots(1, 2, sharey=True)
  rows = report['rows']
  for ax, group in zip(axes, GROUPS):
    for criterion in dict.fromkeys(r['criterion'] for r in rows):
      pts = [r for r in rows if r['group'] == group and r['criterion'] == criterion]
      x = [100 * r['fraction'] for r in pts]
      for metric in METRICS:
        color, name = METRIC_STYLE[metric]
        ax.plot(x, [r[metric] for r in pts], color=color, ls=LINE_STYLES[criterion], marker='o',
                ms=3, lw=1.2 if metric != 'clean' else 0.8, label=f'{name} ({criterion})')
    indices = report['layer_indices'][group]
    ax.set_title(f"{group} layers (l = {', '.join(map(str, indices))} of "
                 f"{report['num_layers']})", fontsize=figures.TITLE_PT)
    ax.set_xlabel('weights removed per ' + report['settings']['scope'] + ' (%)',
                  fontsize=figures.TEXT_PT)
    ax.tick_params(labelsize=figures.TICK_PT)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('test accuracy', fontsize=figures.TEXT_PT)
  axes[0].set_ylim(0, 1)
  fig.legend(*axes[0].get_legend_handles_labels(), loc='outside right center',
             fontsize=figures.TEXT_PT, frameon=False)
  fig.suptitle(figures.wrap(
      f"{report['method']} epoch {report['evaluated_epoch']}: weights removed from former vs "
      f"latter layers (n={report['settings']['n']}, ε={report['settings']['eps']:.4g}, "
      f"PGD-{report['settings']['pgd_steps']})", 110), fontsize=figures.TITLE_PT)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return figures.save(fig, path)
