"""The binarization test of Zimmermann et al. (NeurIPS 2022, "Increasing Confidence in
Adversarial Robustness Evaluations"): an attack unit test where an adversarial example provably
exists.

For each test point x the model's last linear layer is replaced by a binary readout trained on
the model's own features to tell apart 'inner' points (x and random points within (1 − 0.05)·ε
of it, class 0) and one 'boundary' point at distance ε (class 1). The readout classifies every
training point right, so the boundary point is an adversarial example of x in the ε-ball; an
attack on the binarized model that does not find one (any point of class 1) has failed where it
provably could succeed. The test ASR is the fraction of points whose attack succeeds; the
evaluation passes when it is 1 (every failure is an attack failure).

Follows google-research/active-adversarial-tests at commit f5bb425a3500602e5ba3c5bbf7865b2f58837a50:
``active_tests/decision_boundary_binarization.py`` (``_create_raw_data``: inner points uniform
in the (1 − gap)·ε L∞ cube, or rescaled to (1 − gap)·ε in L2 after clipping; the boundary point
uniform in the ε-cube or on the L2 sphere, rescaled by ``utils.clipping_aware_rescaling`` to
distance ε after clipping; the clean point among the inner ones;
``_train_logistic_regression_classifier``: Adam, lr 0.05, until every training point is right,
else the point is skipped ('setup failed'), then ``decision_boundary_closeness`` and the
'adaptive' logit rescaling) with the settings of ``case_studies/evaluate_classifier.py``
(closeness 0.9999, adaptive rescaling, 1 boundary point). Deviations: the readout is fitted
full batch from zero weights on the features standardised by their mean and spread over the
training points (the same linear readouts, better conditioned), and stops once every training
point is right by a logit margin of 1, or after `FIT_STEPS` steps (the official one:
mini-batches of 512 from torch's initialisation, stopped at the first epoch with every point
right, at most 50000 epochs), so that the boundary point keeps a float32-resolvable margin
after ``decision_boundary_closeness`` 0.9999; the placed readout is checked as the attack sees
it (x class 0, the boundary point class 1), else the point counts as not set up; and the
official validation on fresh samples (the random attack's success, reported alongside) is not
computed.

The features are the model's last feature node (``apply_fn``'s third output, the node last by
name), averaged over its spatial or token axes: for the ResNets, the WideResNet and the
SmallCNN the input of their final linear layer. A model without feature nodes (a plain
f(x) -> logits) is read out from its logits, a linear image of its penultimate features.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.evaluate.classifier import Classifier, as_classifier
from fat_jax.evaluate.pieces import pad_rows
from fat_jax.evaluate.registry import ATTACKS, SuiteOptions, attack_batch

N_POINTS = 20          # points of evaluate's binarization check (binarization_n)
N_INNER = 999          # inner samples besides the clean point (the case studies' n_inner_points)
INNER_GAP = 0.05       # relative_inner_boundary_gap: inner points within (1 − gap)·ε
CLOSENESS = 0.9999     # decision_boundary_closeness of case_studies/evaluate_classifier.py
FIT_LR = 0.05          # DecisionBoundaryBinarizationSettings.lr (Adam)
FIT_STEPS = 5000
FIT_MARGIN = 1.0       # the fit stops once every training point is right by this logit margin
LOGITS = 'logits'      # the feature node of a model without feature nodes


@dataclasses.dataclass(frozen=True)
class FeatureApply:
  """The model's features as a vector per example: node `node` of ``apply_fn``'s features
  (mean over the axes between the batch and the last one), or its logits for `LOGITS`."""
  apply_fn: Callable
  node: str

  def __call__(self, params, state, x):
    logits, _, features = self.apply_fn(params, state, x, False)
    if self.node == LOGITS:
      return logits, logits
    phi = features[self.node]
    return (phi.mean(axis=tuple(range(1, phi.ndim - 1))) if phi.ndim > 2 else phi), logits


@dataclasses.dataclass(frozen=True)
class BinarizedApply:
  """The binarized model as an apply function: params ``(model params, μ (F,), σ (F,),
  W (F, 2), b (2,))``, logits ``((φ(x) − μ) / σ) W + b`` (class 0 inner, class 1 boundary): a
  linear readout of φ, standardised by the training points' mean and spread so that the fit
  and float32 resolve feature differences far below the features' size."""
  features: FeatureApply

  def __call__(self, params, state, x, train):
    del train
    model_params, mu, sigma, w, b = params
    phi, _ = self.features(model_params, state, x)
    return ((phi - mu) / sigma) @ w + b, state, {}


def feature_node(model: Classifier, x: np.ndarray) -> str:
  """The node the readout reads: the model's feature node last by name, or `LOGITS`."""
  out = jax.eval_shape(lambda: model.apply_fn(model.params, model.state, x[:1], False))
  nodes = sorted(out[2]) if isinstance(out[2], dict) else []
  return nodes[-1] if nodes else LOGITS


def _distance(delta: np.ndarray, norm: str) -> np.ndarray:
  flat = delta.reshape(len(delta), -1).astype(np.float64)
  return np.sqrt((flat ** 2).sum(1)) if norm == 'L2' else np.abs(flat).max(1)


def _rescale_l2(x: np.ndarray, delta: np.ndarray, target: float) -> np.ndarray:
  """``clip(x + s·δ)`` with s per row such that ‖clip(x + s·δ) − x‖₂ = target (bisection; at
  most target), the job of the official ``clipping_aware_rescaling_l2_torch``."""
  dist = lambda s: _distance(np.clip(x + s.reshape((-1,) + (1,) * (x.ndim - 1)) * delta, 0, 1)
                             - x, 'L2')
  lo = np.zeros(len(x))
  hi = np.full(len(x), target) / np.maximum(_distance(delta, 'L2'), 1e-12)
  for _ in range(60):   # grow hi until it reaches the target (or the box stops it)
    short = dist(hi) < target
    if not short.any():
      break
    hi = np.where(short, 2 * hi, hi)
  for _ in range(60):
    mid = (lo + hi) / 2
    below = dist(mid) <= target
    lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
  return np.clip(x + lo.reshape((-1,) + (1,) * (x.ndim - 1)) * delta, 0, 1)


def inner_points(rng: np.random.Generator, x: np.ndarray, n: int, eps: float,
                 norm: str = 'Linf', gap: float = INNER_GAP) -> np.ndarray:
  """`n` inner points of x (shape without batch axis): L∞ uniform in the (1 − gap)·ε cube, L2
  a random direction rescaled to distance (1 − gap)·ε after clipping to [0, 1]."""
  xs = np.repeat(x[None].astype(np.float64), n, axis=0)
  radius = (1 - gap) * eps
  if norm == 'L2':
    return _rescale_l2(xs, rng.standard_normal(xs.shape), radius).astype(np.float32)
  return np.clip(xs + rng.uniform(-radius, radius, xs.shape), 0, 1).astype(np.float32)


def boundary_point(rng: np.random.Generator, x: np.ndarray, eps: float,
                   norm: str = 'Linf') -> np.ndarray:
  """One point at distance ε of x after clipping to [0, 1]: L∞ δ uniform in the ε-cube scaled
  so that its largest entry with room for ε in the box is ε (the official
  ``clipping_aware_rescaling_linf_torch``); L2 a random direction rescaled to ‖δ‖₂ = ε."""
  x64 = x[None].astype(np.float64)
  if norm == 'L2':
    return _rescale_l2(x64, rng.standard_normal(x64.shape), eps)[0].astype(np.float32)
  delta = rng.uniform(-eps, eps, x64.shape)
  room = np.where(delta >= 0, 1 - x64, x64)
  free = np.abs(delta)[room >= eps]
  scale = eps / (free.max() if free.size else np.abs(delta).max())
  return np.clip(x64 + np.clip(scale * delta, -eps, eps), 0, 1)[0].astype(np.float32)


@functools.partial(jax.jit, static_argnames=('features',))
def _features_batch(params, state, x, *, features: FeatureApply):
  return features(params, state, x)


def _features(model: Classifier, features: FeatureApply, x: np.ndarray, batch_size: int):
  """(φ, logits) of all rows of `x` as float64 host arrays, in padded batches of `batch_size`."""
  phi, logits = [], []
  for lo in range(0, len(x), batch_size):
    chunk = x[lo:lo + batch_size]
    p, z = _features_batch(model.params, model.state, jnp.asarray(pad_rows(chunk, batch_size)),
                           features=features)
    phi.append(np.asarray(p, np.float64)[:len(chunk)])
    logits.append(np.asarray(z, np.float64)[:len(chunk)])
  return np.concatenate(phi), np.concatenate(logits)


@functools.partial(jax.jit, static_argnames=('steps',))
def fit_readout(phi, labels, *, lr: float = FIT_LR, steps: int = FIT_STEPS):
  """Logistic regression u = φ·w + c (P(class 1) = σ(u)) by full-batch Adam on the mean
  logistic loss from zero, stopped at the first step where every row is classified right with
  margin `FIT_MARGIN` (±u ≥ 1). Returns (w, c, every row classified right)."""
  phi = jnp.asarray(phi, jnp.float32)
  t = jnp.asarray(labels, jnp.float32)
  signed = lambda w, c: (phi @ w + c) * (2 * t - 1)
  right = lambda w, c: jnp.all(signed(w, c) > 0)
  loss = lambda wc: jnp.mean(jax.nn.softplus(phi @ wc[0] + wc[1]) - t * (phi @ wc[0] + wc[1]))
  b1, b2 = 0.9, 0.999

  def step(carry):
    (w, c), (mw, mc), (vw, vc), i = carry
    gw, gc = jax.grad(loss)((w, c))
    mw, mc = b1 * mw + (1 - b1) * gw, b1 * mc + (1 - b1) * gc
    vw, vc = b2 * vw + (1 - b2) * gw ** 2, b2 * vc + (1 - b2) * gc ** 2
    k = i + 1
    scale = lr * jnp.sqrt(1 - b2 ** k) / (1 - b1 ** k)
    w = w - scale * mw / (jnp.sqrt(vw) + 1e-8)
    c = c - scale * mc / (jnp.sqrt(vc) + 1e-8)
    return (w, c), (mw, mc), (vw, vc), k

  zero = (jnp.zeros(phi.shape[1]), jnp.zeros(()))
  (w, c), _, _, _ = jax.lax.while_loop(
      lambda carry: (carry[3] < steps) & ~jnp.all(signed(*carry[0]) >= FIT_MARGIN), step,
      (zero, zero, zero, 0))
  return w, c, right(w, c)


def place_readout(w: np.ndarray, c: float, phi: np.ndarray, model_logits: np.ndarray,
                  closeness: float = CLOSENESS) -> tuple[np.ndarray, np.ndarray]:
  """The readout as a 2-class linear layer (W (F, 2), b (2,)), as the official code builds it:
  logits (−u/2, u/2); the decision boundary moved towards the most confident boundary point by
  `closeness` (its logit difference u becomes (1 − closeness)·u, ``decision_boundary_closeness``);
  then the 'adaptive' rescaling: logits divided by (their range / the model's logit range on the
  training points) and shifted to the model's minimum."""
  w64 = np.asarray(w, np.float64)
  weight = np.stack([-w64 / 2, w64 / 2], axis=1)
  bias = np.array([-c / 2, c / 2], np.float64)
  logits = phi @ weight + bias
  lowest = float(np.min(logits[:, 0] - logits[:, 1]))
  bias += np.array([-1.0, 1.0]) * closeness * lowest / 2
  logits = phi @ weight + bias
  factor = (logits.max() - logits.min()) / max(model_logits.max() - model_logits.min(), 1e-12)
  offset = model_logits.min() - logits.min() / factor
  return (weight / factor).astype(np.float32), (bias / factor + offset).astype(np.float32)


class Binarized(NamedTuple):
  """The binarized model of one point: its `Classifier`, the boundary point (its adversarial
  example in the ε-ball) and the inner points, or None and why the setup failed."""
  model: Optional[Classifier]
  boundary: Optional[np.ndarray]
  inner: Optional[np.ndarray]
  failure: Optional[str] = None


def binarize(model: Classifier, x: np.ndarray, rng: np.random.Generator, *, eps: float,
             norm: str = 'Linf', node: str | None = None, n_inner: int = N_INNER,
             closeness: float = CLOSENESS, batch_size: int = 256) -> Binarized:
  """The binarized model of point `x` (shape without batch axis): readout trained on the
  features of [x, `n_inner` inner points] (class 0) and one boundary point (class 1).

  The setup fails (``failure`` says why) when the readout cannot classify every training point
  right, or when the placed readout, run as the attack sees it, does not classify x as 0 and the
  boundary point as 1 (float32 rounding at `closeness` close to 1)."""
  features = FeatureApply(model.apply_fn, node or feature_node(model, x[None]))
  inner = np.concatenate([x[None].astype(np.float32), inner_points(rng, x, n_inner, eps, norm)])
  boundary = boundary_point(rng, x, eps, norm)
  points = np.concatenate([inner, boundary[None]])
  labels = np.r_[np.zeros(len(inner)), 1.0]
  phi, model_logits = _features(model, features, points, batch_size)
  mu = phi.mean(axis=0)
  sigma = phi.std(axis=0)
  sigma = np.where(sigma > 0, sigma, 1.0)
  z = (phi - mu) / sigma
  w, c, right = fit_readout(z, labels)
  if not bool(right):
    return Binarized(None, None, None, f'no linear readout of the {phi.shape[1]} features '
                     f'separates the boundary point from the {len(inner)} inner points')
  weight, bias = place_readout(np.asarray(w), float(c), z, model_logits, closeness)
  readout = tuple(jnp.asarray(a, jnp.float32) for a in (mu, sigma, weight, bias))
  binarized = Classifier(BinarizedApply(features), (model.params, *readout), model.state)
  check = np.asarray(predict(binarized, np.stack([x.astype(np.float32), boundary])))
  if check.tolist() != [0, 1]:
    return Binarized(None, None, None, 'the placed readout does not classify the clean point as '
                     '0 and the boundary point as 1 (rounding)')
  return Binarized(binarized, boundary, inner)


@functools.partial(jax.jit, static_argnames=('apply_fn',))
def _predict(params, state, x, *, apply_fn):
  return jnp.argmax(apply_fn(params, state, x, False)[0], axis=-1)


def predict(model: Classifier, x: np.ndarray) -> jax.Array:
  """The classes the binarized `model` gives the rows of `x`."""
  return _predict(model.params, model.state, jnp.asarray(x), apply_fn=model.apply_fn)


def binary_attacks(names: Sequence[str], norm: str,
                   x: np.ndarray | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """The attacks of `names` that can attack a 2-class model in `norm` (and the points `x`, if
  given), and the others."""
  fits = lambda a: (ATTACKS[a].min_classes <= 2 and norm in ATTACKS[a].norms
                    and not (x is not None and ATTACKS[a].input_problem
                             and ATTACKS[a].input_problem(x, norm)))
  return tuple(a for a in names if fits(a)), tuple(a for a in names if not fits(a))


def attack_binarized(model: Classifier, x: np.ndarray, key, *, eps: float, attacks: Sequence[str],
                     options: SuiteOptions, norm: str = 'Linf'):
  """Runs `attacks` in turn on the binarized `model` at point `x` (label 0) until one finds a
  point of class 1. Returns (success, x_adv, forward passes, backward passes)."""
  # Fixed fields of the static options: one target (C − 1 = 1), no EOT, no draws.
  options = dataclasses.replace(options, n_target_classes=1, n_draws=0, eot_samples=1)
  xb, yb = jnp.asarray(x[None], jnp.float32), jnp.zeros((1,), jnp.int32)
  forward = backward = 0
  x_adv = xb
  for i, name in enumerate(attacks):
    delta, fwd, bwd = attack_batch(model.params, model.state, xb, yb, jax.random.fold_in(key, i),
                                   eps, 0, apply_fn=model.apply_fn, name=name, options=options,
                                   norm=norm)
    forward, backward = forward + int(fwd[0]) + 1, backward + int(bwd[0])
    x_adv = xb + delta
    if int(predict(model, x_adv)[0]) == 1:
      return True, np.asarray(x_adv[0]), forward, backward
  return False, np.asarray(x_adv[0]), forward, backward


def binarization_test(model, x, *, eps: float, norm: str = 'Linf',
                      attacks: Sequence[str] = ('apgd-ce',), seed: int = 0,
                      options: SuiteOptions | None = None, node: str | None = None,
                      n_inner: int = N_INNER, closeness: float = CLOSENESS,
                      batch_size: int = 256) -> dict:
  """The binarization test on the points `x` (N, ...) in [0, 1] of `model` (a `Classifier` or
  any model `evaluate` takes, deterministic): per point the binarized model (`binarize`), then
  `attacks` (names of the evaluation's registry, per-point worst case, `options` their
  settings) on it in the `norm` ε-ball.

  Returns ``{'attack_success': per set-up point, 'attack_success_rate', 'failed',
  'setup_failures': {reason: count}, 'n_sampled', 'attacks', 'feature_node', 'forward',
  'backward'}``; `fat_jax.evaluate.sanity.check_binarization` gives its verdict.
  """
  model = as_classifier(model)
  if model.randomized:
    raise ValueError('the binarization test needs a deterministic model (its readout is fitted '
                     'to one forward per point)')
  x = np.asarray(x, np.float32)
  names, other = binary_attacks(attacks, norm, x)
  if other:
    raise ValueError(f'attacks {list(other)} cannot attack the 2-class binarized model of these '
                     f'points in {norm} (they need more classes, another norm or other inputs); '
                     f'usable: {[a for a in ATTACKS if binary_attacks((a,), norm, x)[0]]}.')
  options = options or SuiteOptions()
  node = node or (feature_node(model, x) if len(x) else None)
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  success, failures = [], {}
  forward = backward = 0
  for i in range(len(x)):
    b = binarize(model, x[i], rng, eps=eps, norm=norm, node=node, n_inner=n_inner,
                 closeness=closeness, batch_size=batch_size)
    forward += n_inner + 4   # the features of the training points, the placement check
    if b.model is None:
      failures[b.failure] = failures.get(b.failure, 0) + 1
      continue
    ok, _, f, bw = attack_binarized(b.model, x[i], jax.random.fold_in(key, i), eps=eps,
                                    attacks=names, options=options, norm=norm)
    success.append(ok)
    forward, backward = forward + f, backward + bw
  succeeded = np.array(success, bool)
  return {'attack_success': succeeded.tolist(), 'n_sampled': len(x),
          'attack_success_rate': float(succeeded.mean()) if len(succeeded) else None,
          'failed': int(np.sum(~succeeded)), 'setup_failures': failures,
          'attacks': list(names), 'feature_node': node, 'n_inner': n_inner, 'eps': eps,
          'norm': norm, 'forward': forward, 'backward': backward}
