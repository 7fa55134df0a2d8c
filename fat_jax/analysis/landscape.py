"""Layer-wise loss landscapes (docs/protocol.md §3; the figure of the LAP paper, Lin et al.
ICML 2024).

  python -m fat_jax.analysis.landscape WORKDIR --epochs=1,2,6
  python -m fat_jax.analysis.landscape WORKDIR --epochs=1,6 --dims=2 --losses=pgd
  python -m fat_jax.analysis.landscape --load=WORKDIR/landscape_1d.npz --show_epochs=4,10,16 \
      --show_layers=1,2,3,4,5,0     # re-plot: the LAP figure's rows and columns (0: all layers)
  python -m fat_jax.analysis.landscape WORKDIR --weights   # per-layer weights, no data

The loss along random directions in weight space (Li et al. 2018, "Visualizing
the loss landscape of neural nets"):

    L(a) = mean_i CE(f(x̃_i; w + a·d), y_i)            (1-D),
    L(a, b) = mean_i CE(f(x̃_i; w + a·d1 + b·d2), y_i)    (2-D),

with *filter-normalised* Gaussian directions: for every output filter j of a
conv/linear kernel (the last axis of a Flax kernel), d_j ← d_j·‖w_j‖/(‖d_j‖ + 1e−10);
biases and BatchNorm parameters get d = 0 (Li et al.'s ``ignore='biasbn'``).
A *layer* landscape keeps d only on that kernel (one layer at a time, in the
explicit order of `Model.weight_layer_order`, numbered l = 1..L as in LAP);
the *all* landscape uses d on every kernel. The draw is the same for every
checkpoint (same seed), rescaled to each checkpoint's filters, and the layer
directions are the all-layer direction restricted to one kernel.

Which loss, on which points: the first `n` points of a split (default: the
training split, the points the training objective is about), with inputs x̃
fixed at each checkpoint (not recomputed per grid point):

* ``clean``: x̃ = x;
* ``train_attack``: the run's own training attack — the very `Method.attack` value
  the train step ran (its start point, step, projection, BatchNorm mode and loss:
  the FGSM family with ZeroGrad's mask, FGSM-MEP's prior step, ATAS's adaptive
  step, PGD, TRADES' KL attack) — at the checkpoint, with its per-example state
  as after a reset (FGSM-MEP's prior and ATAS's previous perturbation freshly
  drawn) and the checkpoint's epoch (ATAS's warm-up): the loss training sees;
* ``pgd``: PGD-k-r with the run's final-evaluation settings (ε, steps, restarts,
  step size) at the checkpoint, maximising the CE of every point (misclassified
  points keep moving, as in PGD training, so the loss is not stopped at the
  decision boundary as the evaluation's early-stopping PGD is).

The grid's losses run the model in evaluation mode (BatchNorm running
statistics), so each point's loss does not depend on the rest of the batch, and
a = 0 is exactly the checkpoint's loss at those points (the training attack
runs in its own BatchNorm mode, its statistics discarded). Under catastrophic overfitting the
``train_attack`` loss falls below the ``pgd`` loss (the single-step attack stops
finding the adversarial examples), and the LAP paper reports that the first
layers' landscapes sharpen first. One number per curve, its *distortion* (`distortion`)

    D = mean_c |L(w + c·d) − L(w)|     (the mean over the grid; 0 when flat),

compares layers and checkpoints (`plot_distortion`: layers × checkpoints, `distortion_table`).

The weights themselves, per kernel in the same order and with no data (`weight_measures`,
`compute_layer_weights`, `plot_layer_weights`, `layer_weights_table`, ``--weights``): the
relative change ‖W_e − W_prev‖_F/‖W_prev‖_F between kept checkpoints, the spectral norm
σ_max of the kernel as a (k_h·k_w·c_in, c_out) matrix and the Frobenius norm. They are not a
figure of the LAP paper, whose layer analysis is the layer-wise landscapes above and the
removal of pseudo-robust shortcuts (`fat_jax.analysis.shortcut_removal`): they are the plain
per-layer test, in the weights, of its claim that the former layers change earlier and more.
The grid is evaluated by a jitted ``lax.map`` (vmap over chunks of
`grid_batch` grid points) per data batch.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import operator
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from fat_jax.attacks import pgd_attack
from fat_jax.data import draw_augmentation
from fat_jax.losses import cross_entropy
from fat_jax.methods import Clock
from fat_jax.reports import figures
from fat_jax.run import run_log
from fat_jax.run.runs import SPLITS, Run

LOSS_KINDS = ('clean', 'train_attack', 'pgd')
FILTER_NORM_EPS = 1e-10  # as Li et al.'s net_plotter.normalize_direction
ALL_LAYERS = 'all'


# ---------------------------------------------------------------------------
# The fixed inputs of a checkpoint's landscape.

@functools.partial(jax.jit, static_argnames=('model', 'attack', 'pgd'))
def adversarial_inputs(params, state, x, y, key, clock: Clock, *, model, attack, pgd):
  """{'clean', 'train_attack', 'pgd'}: the inputs x̃ at a checkpoint.

  `attack` is the run's training attack (`Run.method.attack`), run as in training
  at `clock` (`Run.clock`) from a fresh per-example state; PGD maximises the
  CE of every point in evaluation mode (no freezing of misclassified points,
  unlike the evaluation's PGD, which stops at the decision boundary).

  `model`: a `fat_jax.models.Model` (static: equal models share the compiled
  function); `pgd`: `evaluate.PGDSettings`.
  """
  train_key, pgd_key = jax.random.split(key)
  rows = attack.init_examples(x.shape[0], x.shape[1:])
  identity = draw_augmentation(train_key, x, mode='none')
  train_delta = attack(model, params, state, x, y, train_key, rows, identity, clock).delta
  pgd_delta = pgd_attack(model.apply, params, state, x, y, pgd_key, eps=pgd.eps,
                         alpha=pgd.alpha, steps=pgd.steps, restarts=pgd.restarts,
                         freeze_misclassified=False).delta
  return {'clean': x, 'train_attack': x + train_delta, 'pgd': x + pgd_delta}


# ---------------------------------------------------------------------------
# Directions and the grid.

def _names(key_path) -> tuple[str, ...]:
  return tuple(k.key for k in key_path)


def filter_normalized_direction(key, params, paths: Sequence[tuple[str, ...]]):
  """A Gaussian direction on the kernels at `paths`, zero on every other leaf.

  One N(0, I) draw over all kernels (kernel l takes the l-th slice), each
  output filter j (last axis) rescaled to the same filter of w:
  d_j·‖w_j‖/(‖d_j‖ + 1e−10).
  """
  kernels = [functools.reduce(operator.getitem, p, params) for p in paths]
  sizes = [w.size for w in kernels]
  draw = jax.random.normal(key, (sum(sizes),), kernels[0].dtype)
  chunks = jnp.split(draw, np.cumsum(sizes)[:-1])
  filter_norm = lambda a: jnp.sqrt(jnp.sum(a * a, axis=tuple(range(a.ndim - 1))))
  index = {tuple(p): l for l, p in enumerate(paths)}

  def leaf(key_path, w):
    l = index.get(_names(key_path))
    if l is None:
      return jnp.zeros_like(w)
    d = chunks[l].reshape(w.shape)
    return d * filter_norm(w) / (filter_norm(d) + FILTER_NORM_EPS)

  return jax.tree_util.tree_map_with_path(leaf, params)


@functools.partial(jax.jit, static_argnames=('paths', 'dims'))
def random_directions(key, params, *, paths: tuple, dims: int):
  """`dims` filter-normalised directions (keys ``fold_in(key, k)``), stacked on a leading axis."""
  directions = [filter_normalized_direction(jax.random.fold_in(key, k), params, paths)
                for k in range(dims)]
  return jax.tree.map(lambda *d: jnp.stack(d), *directions)


def mask_layers(direction, paths: Sequence[tuple[str, ...]], mask):
  """`direction` with the kernel at ``paths[l]`` scaled by ``mask[l]`` (1 keeps, 0 drops)."""
  index = {tuple(p): l for l, p in enumerate(paths)}
  return jax.tree_util.tree_map_with_path(
      lambda kp, d: d * mask[index[_names(kp)]] if _names(kp) in index else d, direction)


def grid_coefficients(axis: np.ndarray, dims: int) -> np.ndarray:
  """(G, dims) grid rows: every combination of `axis` values (G = len(axis)^dims, 'ij' order)."""
  if dims not in (1, 2):
    raise ValueError(f'dims must be 1 or 2, got {dims}.')
  mesh = np.meshgrid(*([np.asarray(axis, np.float32)] * dims), indexing='ij')
  return np.stack([m.ravel() for m in mesh], axis=-1)


@functools.partial(jax.jit, static_argnames=('model', 'paths', 'grid_batch'))
def grid_loss_sums(params, state, directions, layer_mask, coefficients, inputs, labels, *,
                   model, paths: tuple, grid_batch: int):
  """Σ_i CE(f(x̃_i; w + Σ_k c_k·d_k), y_i) for every grid row c: (G, kinds).

  `directions`: params-shaped pytree with a leading axis K (one per grid
  dimension), restricted to the kernels ``paths[l]`` with ``layer_mask[l]`` = 1;
  `coefficients`: (G, K); `inputs`: (kinds, B, ...) in [0, 1]; `model`: a
  `fat_jax.models.Model` (any hashable object with its `apply`), evaluation mode.
  """
  directions = mask_layers(directions, paths, layer_mask)
  kinds, batch = inputs.shape[:2]
  x = inputs.reshape((kinds * batch,) + inputs.shape[2:])
  y = jnp.tile(labels, kinds)

  def loss_at(c):
    w = jax.tree.map(lambda p, d: p + jnp.tensordot(c, d, axes=1), params, directions)
    logits = model.apply(w, state, x, False)[0]
    return cross_entropy(logits, y).reshape(kinds, batch).sum(axis=1)

  return jax.lax.map(loss_at, coefficients, batch_size=grid_batch)


def landscape_losses(model, params, state, directions, layer_mask, coefficients, inputs,
                     labels, *, paths, batch_size: int = 256, grid_batch: int = 8) -> np.ndarray:
  """Mean CE (G, kinds) over all points, in data batches of `batch_size` (see `grid_loss_sums`)."""
  n = len(labels)
  total = 0.0
  for lo in range(0, n, batch_size):
    total = total + np.asarray(grid_loss_sums(
        params, state, directions, layer_mask, coefficients, inputs[:, lo:lo + batch_size],
        labels[lo:lo + batch_size], model=model, paths=tuple(paths),
        grid_batch=grid_batch), np.float64)
  return total / n


# ---------------------------------------------------------------------------
# A run's landscapes.

@dataclasses.dataclass
class Landscape:
  """Losses (epochs, layer sets, kinds, *grid) along `dims` filter-normalised directions."""
  losses: np.ndarray
  axis: np.ndarray          # the coefficients of one grid axis
  epochs: list[int]
  layers: list[str]         # kernel names (LAP order) and 'all'
  layer_indices: list[int]  # l = 1..L of each layer set; 0 for 'all'
  kinds: list[str]
  meta: dict                # workdir, method, dims, split, n, seed, radius, attacks

  def save(self, out_dir: str) -> str:
    """Writes ``landscape_{dims}d.npz`` (arrays + JSON metadata) into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"landscape_{self.meta['dims']}d.npz")
    np.savez_compressed(path, losses=self.losses, axis=self.axis, meta=json.dumps(
        {**self.meta, 'epochs': self.epochs, 'layers': self.layers,
         'layer_indices': self.layer_indices, 'kinds': self.kinds}))
    return path

  @classmethod
  def load(cls, path: str) -> 'Landscape':
    with np.load(path) as f:
      meta = json.loads(str(f['meta']))
      return cls(f['losses'], f['axis'], meta.pop('epochs'), meta.pop('layers'),
                 meta.pop('layer_indices'), meta.pop('kinds'), meta)


def layer_name(path: tuple[str, ...]) -> str:
  return '/'.join(path[:-1]) if len(path) > 1 else path[0]


def default_layers(num_layers: int) -> list[int]:
  """All layers up to 6, else the first five and the last (as the LAP figure's columns)."""
  return list(range(1, num_layers + 1)) if num_layers <= 6 else [1, 2, 3, 4, 5, num_layers]


def compute_landscape(run: Run | str, *, epochs: Sequence[int] = (), dims: int = 1,
                      layers: Sequence[int] = (), kinds: Sequence[str] = LOSS_KINDS,
                      split: str = 'train', n: int = 500, radius: float = 1.0,
                      points: int = 0, seed: int = 0, batch_size: int = 256,
                      grid_batch: int = 8) -> Landscape:
  """Landscapes of `run` (a `Run` or its workdir) at checkpoints `epochs` (default: every
  kept one).

  `layers`: 1-based indices in the LAP layer order (default `default_layers`);
  the all-layer landscape is always added. `points` per grid axis (default 41
  for 1-D, 21 for 2-D).
  """
  run = run if isinstance(run, Run) else Run.open(os.path.abspath(run))
  kinds = list(kinds)
  unknown = [k for k in kinds if k not in LOSS_KINDS]
  if unknown or not kinds:
    raise ValueError(f'Unknown loss kinds {unknown}; choose from {LOSS_KINDS}.')
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
  available = run.epochs()
  epochs = list(epochs) or available
  missing = [e for e in epochs if e not in available]
  if missing or not epochs:
    raise FileNotFoundError(
        f'No checkpoint of epochs {missing or "any"} in {run.workdir} (kept: {available}). Runs '
        f'keep the last checkpoint_keep={run.config.checkpoint_keep} epochs; retrain with '
        '--config.checkpoint_keep=NUM_EPOCHS to keep the epochs you want to compare.')
  points = points or (41 if dims == 1 else 21)
  if points < 1 or radius < 0:
    raise ValueError(f'Need points ≥ 1 and radius ≥ 0 (got points={points}, radius={radius}).')
  axis = np.linspace(-radius, radius, points, dtype=np.float32)
  coefficients = jnp.asarray(grid_coefficients(axis, dims))
  x, y = (jnp.asarray(a) for a in run.points(split, n))
  n = len(y)
  attack = run.method.attack
  pgd = run.final_pgd
  key = jax.random.key(seed)
  direction_key, attack_key = jax.random.split(key)

  losses = []
  for epoch, model, ts in run.checkpoints(epochs):
    paths = tuple(model.weight_layer_order(ts.params))
    chosen = list(layers) or default_layers(len(paths))
    if not all(1 <= l <= len(paths) for l in chosen):
      raise ValueError(f'layers must be in 1..{len(paths)} (the LAP layer order), got {chosen}.')
    inputs = []
    for lo in range(0, n, batch_size):
      adv = adversarial_inputs(ts.params, ts.batch_stats, x[lo:lo + batch_size],
                               y[lo:lo + batch_size], jax.random.fold_in(attack_key, lo),
                               run.clock(epoch), model=model, attack=attack, pgd=pgd)
      inputs.append(jnp.stack([adv[k] for k in kinds]))
    inputs = jnp.concatenate(inputs, axis=1)
    directions = random_directions(direction_key, ts.params, paths=paths, dims=dims)
    masks = [jax.nn.one_hot(l - 1, len(paths)) for l in chosen] + [jnp.ones(len(paths))]
    per_layer = []
    for mask in masks:
      grid = landscape_losses(model, ts.params, ts.batch_stats, directions, mask,
                              coefficients, inputs, y, paths=paths, batch_size=batch_size,
                              grid_batch=grid_batch)
      per_layer.append(grid.T.reshape((len(kinds),) + (points,) * dims))
    losses.append(np.stack(per_layer))
  names = [layer_name(paths[l - 1]) for l in chosen] + [ALL_LAYERS]
  meta = {'workdir': run.workdir, 'method': run.label, 'dims': dims, 'split': split,
          'n': int(n), 'seed': seed, 'radius': radius, 'eps': float(run.config.eps),
          'train_attack': {'kind': type(attack).__name__, **dataclasses.asdict(attack)},
          'pgd': dataclasses.asdict(pgd)}
  return Landscape(np.stack(losses), axis, list(epochs), names, chosen + [0], kinds, meta)


# ---------------------------------------------------------------------------
# The figure: rows = checkpoints, columns = layers (+ all).

KIND_STYLE = {'clean': ('tab:blue', 'clean'), 'train_attack': ('tab:orange', 'training attack'),
              'pgd': ('tab:red', 'PGD')}


def plot_landscape(landscape: Landscape, path: str, *, kind: str = '', title: str = '') -> str:
  """Grid of panels (checkpoints × layers): curves per loss kind (1-D) or log10-loss contours
  of `kind` (2-D; default the last kind, i.e. PGD when computed) on one shared scale."""
  losses, a = landscape.losses, landscape.axis
  rows, cols = len(landscape.epochs), len(landscape.layers)
  fig = figures.new_figure(2.1 * cols + 0.9, 1.8 * rows + 0.9)
  axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
  dims = landscape.meta['dims']
  if dims == 2:
    k = landscape.kinds.index(kind) if kind else len(landscape.kinds) - 1
    values = np.log10(np.maximum(losses[:, :, k], 1e-6))
    levels = np.linspace(values.min(), max(values.max(), values.min() + 1e-3), 15)
  for r, epoch in enumerate(landscape.epochs):
    for c, name in enumerate(landscape.layers):
      ax = axes[r, c]
      if dims == 1:
        for k, kind_name in enumerate(landscape.kinds):
          color, label = KIND_STYLE[kind_name]
          ax.plot(a, losses[r, c, k], color=color, lw=1.2, label=label)
        ax.set_yscale('log')
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
        ax.yaxis.set_minor_formatter(NullFormatter())
      else:
        contour = ax.contourf(a, a, values[r, c].T, levels=levels, cmap='viridis')
        ax.plot(0, 0, 'w+', ms=6)
      if r == 0:
        index = landscape.layer_indices[c]
        ax.set_title(figures.wrap(f'{index}: {name}' if index else 'all layers', 24),
                     fontsize=figures.TEXT_PT)
      if c == 0:
        ax.set_ylabel(f'epoch {epoch}\n' + ('mean CE' if dims == 1 else 'a₂'),
                      fontsize=figures.TEXT_PT)
      if r == rows - 1:
        ax.set_xlabel('a (weights w + a·d)' if dims == 1 else 'a₁', fontsize=figures.TEXT_PT)
      ax.tick_params(labelsize=figures.TICK_PT)
  if dims == 1:
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc='outside lower center',
               ncol=len(landscape.kinds), fontsize=figures.TEXT_PT, frameon=False)
  else:
    cbar = fig.colorbar(contour, ax=axes, shrink=0.8)
    cbar.set_label(f'log10 CE ({KIND_STYLE[landscape.kinds[k]][1]})', fontsize=figures.TEXT_PT)
    cbar.ax.tick_params(labelsize=figures.TICK_PT)
  meta = landscape.meta
  suptitle = title or (f"{meta['method']}: CE along a filter-normalised direction per layer "
                       f"({meta['split']} n={meta['n']}, ε={meta['eps']:.3g})")
  fig.suptitle(figures.wrap(suptitle, int(12 * fig.get_figwidth())), fontsize=figures.TITLE_PT)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return figures.save(fig, path)


def select(landscape: Landscape, *, epochs: Sequence[int] = (),
           layers: Sequence[int] = ()) -> Landscape:
  """`landscape` restricted to the checkpoints `epochs` and the layer sets `layers` (their
  index l, 0 for all layers), in the order given; empty keeps all."""
  epochs, layers = list(epochs) or landscape.epochs, list(layers) or landscape.layer_indices
  missing = ([f'epoch {e}' for e in epochs if e not in landscape.epochs]
             + [f'layer {l}' for l in layers if l not in landscape.layer_indices])
  if missing:
    raise ValueError(f'The landscape holds no {", ".join(missing)} (epochs {landscape.epochs}, '
                     f'layers {landscape.layer_indices}).')
  rows = [landscape.epochs.index(e) for e in epochs]
  cols = [landscape.layer_indices.index(l) for l in layers]
  return dataclasses.replace(
      landscape, losses=landscape.losses[np.ix_(rows, cols)], epochs=epochs,
      layers=[landscape.layers[c] for c in cols], layer_indices=layers)


def distortion(landscape: Landscape) -> np.ndarray:
  """(epochs, layer sets, kinds): the mean change of the loss over the grid,
  D = mean_c |L(w + c·d) − L(w)|, 0 for a flat landscape, large for a sharp one whether the loss
  rises or falls away from w (the LAP paper's "distortion" of a layer, as one number per curve;
  the PGD inputs, fixed at w, mostly lose strength there)."""
  centre = np.flatnonzero(landscape.axis == 0)
  if centre.size != 1:
    raise ValueError('The distortion needs a = 0 on the grid (an odd number of points).')
  dims = landscape.meta['dims']
  at_zero = landscape.losses[(Ellipsis,) + (int(centre[0]),) * dims]
  return np.abs(landscape.losses - at_zero[(Ellipsis,) + (None,) * dims]).mean(
      axis=tuple(range(-dims, 0)))


def plot_distortion(landscape: Landscape, path: str, *, floor: float = 1e-3) -> str:
  """Per loss kind, a heat map of log10 D (`distortion`, clipped at `floor`): layer sets (rows,
  l = 1..L, then all) against checkpoints (columns), one colour scale for all panels."""
  values = np.log10(np.maximum(distortion(landscape), floor))
  kinds, meta = landscape.kinds, landscape.meta
  rows, cols = len(landscape.layers), len(landscape.epochs)
  fig = figures.new_figure(max(3.2, 0.28 * cols + 1.6) * len(kinds) + 0.8, 0.2 * rows + 1.6)
  axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True)[0]
  norm = Normalize(values.min(), max(values.max(), values.min() + 1e-3))
  for k, (ax, kind) in enumerate(zip(axes, kinds)):
    image = ax.imshow(values[:, :, k].T, aspect='auto', cmap='magma', norm=norm,
                      interpolation='nearest')
    ax.set_xticks(range(cols), [str(e) for e in landscape.epochs])
    ax.set_yticks(range(rows), [str(l) if l else 'all' for l in landscape.layer_indices])
    ax.set_title(KIND_STYLE[kind][1] + ' loss', fontsize=figures.TITLE_PT)
    ax.set_xlabel('epoch', fontsize=figures.TEXT_PT)
    ax.tick_params(labelsize=figures.TICK_PT)
  axes[0].set_ylabel('layer l (LAP order)', fontsize=figures.TEXT_PT)
  cbar = fig.colorbar(image, ax=axes, shrink=0.9)
  cbar.set_label(f'log10 mean |loss change| over a ∈ [−{meta["radius"]:g}, '
                 f'{meta["radius"]:g}]', fontsize=figures.TEXT_PT)
  cbar.ax.tick_params(labelsize=figures.TICK_PT)
  fig.suptitle(figures.wrap(f"{meta['method']}: distortion per layer "
                            f"({meta['split']} n={meta['n']}, ε={meta['eps']:.3g})",
                            int(12 * fig.get_figwidth())), fontsize=figures.TITLE_PT)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return figures.save(fig, path)


def distortion_table(landscape: Landscape) -> str:
  """D per layer set (rows) and checkpoint (columns), one block per loss kind."""
  values = distortion(landscape)
  return '\n'.join(line for k, kind in enumerate(landscape.kinds) for line in _layer_block(
      f'distortion D ({kind})', landscape.epochs, landscape.layer_indices, values[:, :, k]))


def _layer_block(title: str, epochs: Sequence[int], layer_indices: Sequence[int],
                 values: np.ndarray) -> list[str]:
  """The lines of one table block: layer sets (rows, 0 as 'all') × checkpoints (columns) of
  `values` (epochs, layer sets), '–' where a value is undefined (NaN)."""
  lines = [f'{title}: layer \\ epoch', 'l    ' + ' '.join(f'{e:>8}' for e in epochs)]
  for c, l in enumerate(layer_indices):
    lines.append(f'{l if l else "all":<4} ' + ' '.join(
        f'{"–":>8}' if np.isnan(v) else f'{v:8.3g}' for v in values[:, c]))
  return lines


# ---------------------------------------------------------------------------
# Per-layer weights across checkpoints (no data): how much each kernel moves, and its scale.

WEIGHT_MEASURES = ('relative_change', 'spectral_norm', 'norm')
WEIGHT_LABELS = {'relative_change': 'relative change ‖W_e − W_prev‖ / ‖W_prev‖',
                 'spectral_norm': 'spectral norm σ_max(W)', 'norm': 'Frobenius norm ‖W‖'}


def kernel_matrix(kernel) -> np.ndarray:
  """A Flax conv/linear kernel (…, c_in, c_out) as the (k_h·k_w·c_in, c_out) matrix whose
  columns are the output filters (the reshaping of Miyato et al. 2018's spectral
  normalisation), in float64."""
  kernel = np.asarray(kernel, np.float64)
  if kernel.ndim < 2:
    raise ValueError(f'A kernel has ≥ 2 axes (…, c_in, c_out), got shape {kernel.shape}.')
  return kernel.reshape(-1, kernel.shape[-1])


def weight_measures(kernels: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
  """(measures, checkpoints, L + 1): `WEIGHT_MEASURES` of the kernels ``kernels[e][l]`` (the L
  kernels of checkpoint e, the same shapes at every checkpoint), the last column all kernels
  together (their concatenation: no spectral norm, NaN):

    relative_change[e, l] = ‖W_l(e) − W_l(e−1)‖_F / ‖W_l(e−1)‖_F   (NaN at the first e),
    spectral_norm[e, l]   = σ_max of `kernel_matrix` (W_l(e)),
    norm[e, l]            = ‖W_l(e)‖_F,

  e−1 being the previous entry of `kernels` (the previous kept checkpoint)."""
  if not kernels or not kernels[0]:
    raise ValueError('weight_measures needs ≥ 1 checkpoint of ≥ 1 kernel.')
  shapes = [tuple(np.shape(w) for w in ws) for ws in kernels]
  if any(s != shapes[0] for s in shapes):
    raise ValueError(f'Every checkpoint needs the same kernel shapes; got {shapes[0]} and '
                     f'{next(s for s in shapes if s != shapes[0])}.')
  matrices = [[kernel_matrix(w) for w in ws] for ws in kernels]
  epochs, layers = len(matrices), len(matrices[0])
  values = np.full((len(WEIGHT_MEASURES), epochs, layers + 1), np.nan)
  change, spectral, norm = (WEIGHT_MEASURES.index(m)
                            for m in ('relative_change', 'spectral_norm', 'norm'))
  for e, ms in enumerate(matrices):
    squares = np.array([np.sum(m * m) for m in ms])
    values[norm, e] = np.sqrt(np.append(squares, squares.sum()))
    values[spectral, e, :layers] = [np.linalg.norm(m, 2) for m in ms]
    if e:
      moved = np.array([np.sum((m - p) ** 2) for m, p in zip(ms, matrices[e - 1])])
      before = values[norm, e - 1] ** 2
      values[change, e] = np.sqrt(np.append(moved, moved.sum()) / before)
  return values


@dataclasses.dataclass
class LayerWeights:
  """`weight_measures` of a run's checkpoints: values (measures, epochs, layer sets), the layer
  sets the kernels in the LAP order (l = 1..L) and all kernels (index 0)."""
  values: np.ndarray
  epochs: list[int]
  layers: list[str]
  layer_indices: list[int]
  measures: list[str]
  meta: dict                # workdir, method, eps

  def save(self, out_dir: str) -> str:
    """Writes ``layer_weights.json`` (NaN as null) into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    values = np.where(np.isnan(self.values), None, self.values).tolist()
    return run_log.atomic_write_json(os.path.join(out_dir, 'layer_weights.json'),
                                     {**dataclasses.asdict(self), 'values': values})

  @classmethod
  def load(cls, path: str) -> 'LayerWeights':
    with open(path) as f:
      data = json.load(f)
    return cls(**{**data, 'values': np.array(data['values'], dtype=np.float64)})


def compute_layer_weights(run: Run | str, *, epochs: Sequence[int] = ()) -> LayerWeights:
  """`weight_measures` of `run` (a `Run` or its workdir) over its checkpoints `epochs` (default:
  every kept one), the trained weights (`TrainState.params`), kernels in `weight_layer_order`.
  The relative change at a checkpoint is from the previous one in `epochs`."""
  run = run if isinstance(run, Run) else Run.open(os.path.abspath(run))
  available = run.epochs()
  epochs = list(epochs) or available
  missing = [e for e in epochs if e not in available]
  if missing or not epochs:
    raise FileNotFoundError(f'No checkpoint of epochs {missing or "any"} in {run.workdir} '
                            f'(kept: {available}).')
  kernels, paths = [], []
  for _, model, ts in run.checkpoints(epochs):
    paths = model.weight_layer_order(ts.params)
    kernels.append([np.array(functools.reduce(operator.getitem, p, ts.params)) for p in paths])
  return LayerWeights(weight_measures(kernels), epochs,
                      [layer_name(p) for p in paths] + [ALL_LAYERS],
                      list(range(1, len(paths) + 1)) + [0], list(WEIGHT_MEASURES),
                      {'workdir': run.workdir, 'method': run.label, 'eps': float(run.config.eps)})


def plot_layer_weights(weights: LayerWeights, path: str, *, former: int = 5) -> str:
  """One panel per measure against the epoch: the first `former` layers in colour, the other
  kernels grey, the last kernel (the classifier) dashed black, all kernels together dotted
  (relative change and norm)."""
  values, epochs = weights.values, weights.epochs
  fig = figures.new_figure(3.4 * len(weights.measures) + 0.4, 3.4)
  axes = fig.subplots(1, len(weights.measures), squeeze=False)[0]
  last = max(weights.layer_indices)
  colours = colormaps['viridis'](np.linspace(0, 0.9, former))
  for ax, (m, measure) in zip(axes, enumerate(weights.measures)):
    for c, l in enumerate(weights.layer_indices):
      if l == 0:
        style = dict(color='tab:red', ls=':', lw=1.4, label='all kernels')
      elif l == last:
        style = dict(color='black', ls='--', lw=1.2, label=f'{l}: {weights.layers[c]}')
      elif l <= former:
        style = dict(color=colours[l - 1], lw=1.6, label=f'{l}: {weights.layers[c]}')
      else:
        style = dict(color='0.65', lw=0.8, label=f'{former + 1}–{last - 1}' if l == former + 1
                     else None)
      if np.isfinite(values[m, :, c]).any():
        ax.plot(epochs, values[m, :, c], marker='.', ms=3, **style)
    ax.set_yscale('log')
    ax.set_title(WEIGHT_LABELS[measure], fontsize=figures.TITLE_PT)
    ax.set_xlabel('epoch', fontsize=figures.TEXT_PT)
    ax.tick_params(labelsize=figures.TICK_PT)
  handles, labels = axes[-1].get_legend_handles_labels()
  fig.legend(handles, labels, loc='outside right center', fontsize=figures.TICK_PT,
             frameon=False)
  meta = weights.meta
  fig.suptitle(f"{meta['method']}: per-layer weights (ε={meta['eps']:.3g}, layers in the LAP "
               'order)', fontsize=figures.TITLE_PT)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return figures.save(fig, path)


def layer_weights_table(weights: LayerWeights, measures: Sequence[str] = ()) -> str:
  """Per measure a block of layer sets (rows, l = 1..L then all) × checkpoints (columns);
  '–' where a value is undefined (the first relative change, the spectral norm of all)."""
  lines = []
  for measure in list(measures) or weights.measures:
    if measure not in weights.measures:
      raise ValueError(f'No measure {measure!r}; the weights hold {weights.measures}.')
    lines += _layer_block(measure, weights.epochs, weights.layer_indices,
                          weights.values[weights.measures.index(measure)])
  return '\n'.join(lines)


def _int_list(text: str) -> list[int]:
  return [int(v) for v in text.split(',') if v.strip()]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('workdir', nargs='?', default='', help='the run (or --load)')
  parser.add_argument('--load', default='', help='instead of computing: a saved '
                      'landscape_{1,2}d.npz, re-plotted (with --show_epochs/--show_layers)')
  parser.add_argument('--epochs', default='', help='checkpoint epochs, e.g. 1,2,6 (default: all '
                      'kept checkpoints)')
  parser.add_argument('--dims', type=int, default=1, choices=(1, 2))
  parser.add_argument('--layers', default='', help='1-based layer indices in the LAP order '
                      '(default: all up to 6 layers, else 1-5 and the last)')
  parser.add_argument('--losses', default=','.join(LOSS_KINDS),
                      help=f'comma-separated, from {LOSS_KINDS}')
  parser.add_argument('--split', default='train', choices=SPLITS)
  parser.add_argument('--n', type=int, default=500, help='first n points of the split')
  parser.add_argument('--radius', type=float, default=1.0)
  parser.add_argument('--points', type=int, default=0, help='per axis (default 41 / 21)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--grid_batch', type=int, default=8, help='grid points per vmap chunk')
  parser.add_argument('--show_epochs', default='', help='the figure\'s rows (default: all)')
  parser.add_argument('--show_layers', default='', help='the figure\'s columns: layer indices, '
                      '0 for all layers (default: all computed)')
  parser.add_argument('--out', default='', help='output folder (default: WORKDIR, or the '
                      'folder of --load)')
  parser.add_argument('--weights', action='store_true', help='instead of landscapes: the '
                      'per-layer relative weight change, spectral norm and norm over the '
                      'checkpoints --epochs (no data); layer_weights.json and .png')
  args = parser.parse_args(argv)
  if bool(args.workdir) == bool(args.load):
    parser.error('give either a WORKDIR or --load=NPZ.')
  if args.weights:
    out = args.out or args.workdir or os.path.dirname(os.path.abspath(args.load))
    weights = (LayerWeights.load(args.load) if args.load else
               compute_layer_weights(args.workdir, epochs=_int_list(args.epochs)))
    if not args.load:
      print(weights.save(out))
    print(plot_layer_weights(weights, os.path.join(out, 'layer_weights.png')))
    print(layer_weights_table(weights))
    return
  if args.load:
    landscape = Landscape.load(args.load)
    out = args.out or os.path.dirname(os.path.abspath(args.load))
  else:
    landscape = compute_landscape(
        args.workdir, epochs=_int_list(args.epochs), dims=args.dims,
        layers=_int_list(args.layers), kinds=[k for k in args.losses.split(',') if k],
        split=args.split, n=args.n, radius=args.radius, points=args.points, seed=args.seed,
        batch_size=args.batch_size, grid_batch=args.grid_batch)
    out = args.out or args.workdir
    print(landscape.save(out))
  stem = os.path.join(out, f"landscape_{landscape.meta['dims']}d")
  shown = select(landscape, epochs=_int_list(args.show_epochs),
                 layers=_int_list(args.show_layers))
  print(plot_landscape(shown, stem + '.png'))
  if len(landscape.axis) % 2:  # a = 0 on the grid
    print(plot_distortion(landscape, stem + '_distortion.png'))
    print(distortion_table(landscape))


if __name__ == '__main__':
  main()
