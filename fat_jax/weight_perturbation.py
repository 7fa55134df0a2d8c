"""Weight perturbations as tree-mapped updates on parameter pytrees: LAP and AWP.

Both perturb each conv/linear kernel l relative to its own norm,

    w_l ← w_l + s_l·‖w_l‖·d_l / (‖d_l‖ + 1e−20),

along a direction d and with a per-layer scale s_l; they differ in d, s_l and
in whether the perturbation is removed after the step.

LAP (Layer-Aware Adversarial Weight Perturbation, ICML 2024, as
`tmllab/2024_ICML_LAP` computes it): d is the update of the real optimiser step
on the loss at the attack's start point (a *descent* direction: for the torch
SGD its momentum, coupled weight decay, the schedule's current lr and momentum),
``tx.update`` on the optimiser state without keeping the new state, so the
rollback is exact by construction and any optax optimiser works; s_l = β·λ_l with λ_l = 1 − (ln l / ln L)^γ over an
explicit layer order l = 1..L; the perturbation is never removed.

AWP (Wu et al. 2020, `csdongxian/AWP utils_awp.py`): d is the gradient of
the training loss (CE at x + δ for AT-AWP, the TRADES loss for TRADES-AWP)
in train-mode BatchNorm, i.e. the *ascent* direction; s_l = γ (0.01 AT-AWP,
0.005 TRADES-AWP). The official code takes one plain-SGD step on −loss with a
proxy copy of the model (so the model's BatchNorm statistics are untouched)
and perturbs every ``weight`` tensor with ndim > 1: all conv/linear kernels,
which is exactly `Model.weight_layer_order` for every fat_jax model (tested).
The optimiser step is taken at w + v (its gradient and, for the torch SGD, its
coupled weight decay), then v is subtracted again: w ← w + v + u − v, where u is
``tx.update`` at w + v (−lr·b' for the torch SGD).
"""
from __future__ import annotations

import functools
import operator
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Path = tuple[str, ...]
NORM_EPS = 1e-20


def lap_layer_factors(num_layers: int, gamma: float) -> np.ndarray:
  """λ_l = 1 − (ln l / ln L)^γ for l = 1..L (λ_1 = 1, λ_L = 0; a single layer gets λ = 1)."""
  if num_layers == 1:
    return np.ones(1)
  l = np.arange(1, num_layers + 1, dtype=np.float64)
  return 1.0 - (np.log(l) / np.log(num_layers)) ** gamma


def leaf_at(tree, path: Path):
  """The leaf of the nested dict `tree` at `path` (e.g. ``('conv1', 'kernel')``)."""
  return functools.reduce(operator.getitem, path, tree)


def with_leaf(tree, path: Path, value):
  """A copy of the nested dict `tree` with the leaf at `path` replaced by `value`."""
  if not path:
    return value
  return {**tree, path[0]: with_leaf(tree[path[0]], path[1:], value)}


def relative_perturbation(params, direction, paths: Sequence[Path], scales: Sequence[float]):
  """Per-layer perturbations s_l·‖w_l‖·d_l/(‖d_l‖ + 1e−20) for the kernels at `paths`.

  Returns a list of arrays aligned with `paths`.
  """
  deltas = []
  for path, scale in zip(paths, scales):
    w, d = leaf_at(params, path), leaf_at(direction, path)
    deltas.append(scale * jnp.linalg.norm(w) * d / (jnp.linalg.norm(d) + NORM_EPS))
  return deltas


def add_at_paths(params, paths: Sequence[Path], deltas, sign: float = 1.0):
  """`params` with ``sign·delta`` added to the leaf at each path."""
  for path, delta in zip(paths, deltas):
    params = with_leaf(params, path, leaf_at(params, path) + sign * delta)
  return params


def lap_direction(params, grads, tx: optax.GradientTransformation, opt_state, *,
                  ascent: bool = False):
  """The update of a proxy optimiser step, d = w' − w (the official LAP: descent).

  The proxy step is ``tx.update`` on `opt_state` whose new state is dropped, so
  weights and optimiser state (momentum buffers, Adam moments, count) are
  untouched: the rollback is exact by construction. With `ascent=True` the
  sign is flipped (the AWP-style reading: perturb up the loss).
  """
  updates, _ = tx.update(grads, opt_state, params)
  stepped = optax.apply_updates(params, updates)
  sign = -1.0 if ascent else 1.0
  return jax.tree.map(lambda new, old: sign * (new - old), stepped, params)


def lap_perturb(params, grads, tx: optax.GradientTransformation, opt_state, *,
                paths: Sequence[Path], beta: float, gamma: float, ascent: bool = False):
  """LAP: w_l ← w_l + β·λ_l·‖w_l‖·d_l/(‖d_l‖ + 1e−20) along `lap_direction`.

  `grads`: ∇_w of the loss at the attack's start point; `paths`: the explicit
  layer order (e.g. `Model.weight_layer_order`). Returns the perturbed
  parameters and the per-layer perturbation norms (L,).
  """
  direction = lap_direction(params, grads, tx, opt_state, ascent=ascent)
  scales = beta * lap_layer_factors(len(paths), gamma)
  deltas = relative_perturbation(params, direction, paths, scales)
  norms = jnp.stack([jnp.linalg.norm(d) for d in deltas])
  return add_at_paths(params, paths, deltas), norms


def awp_perturbation(params, loss_grads, paths: Sequence[Path], gamma: float):
  """AWP's per-layer ascent perturbation v_l = γ·‖w_l‖·∇_l/(‖∇_l‖ + 1e−20) (∇ of the loss to
  increase); a zero gradient gives v_l = 0. Add it with `add_at_paths`, take the optimiser
  step there, and remove it with `add_at_paths(..., sign=-1.0)`."""
  return relative_perturbation(params, loss_grads, paths, [gamma] * len(paths))
