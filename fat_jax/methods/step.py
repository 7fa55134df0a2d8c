"""One training step, ``make_train_step(...) -> train_step``, and the `TrainState` it updates.

batch (uint8, sharded) → augment → the attack: a start point η and one
forward/backward there (∇_η; also ∇_w for LAP) → [ZeroGrad: mask ∇_η] →
δ = box(Π_ε(η + α·sign ∇_η)) (ATAS: a per-example α), or a multi-step attack
(PGD, TRADES' KL attack) → [LAP: perturb w] → [AWP: perturb w] → objective:
the base loss (CE at x + δ, FGSM-MEP, TRADES, MART, from the training forwards
in the official order) [+ L_co on a second, C_p-masked forward at x + δ] [+ AAER]
[+ GradAlign] [+ L_stable] → ∇_w → SGD → [AWP: restore w] → per-example state
written back.

Terms that compare the adversarial forward with the start forward (FGSM-MEP's
logit pairing, L_stable, L_co's L_stable(C_p)) differentiate through both
forwards: the start forward's features and logits come from the attack's own
forward, and their cotangents are pulled back through it (FGSM-MEP's official
code keeps that graph with ``retain_graph``; L_stable and L_co are built on it).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from fat_jax import optim
from fat_jax.attacks import (atas_step_sizes, clip_to_box, init_perturbation, input_gradient,
                             kl_attack, pgd_attack, sign_step, zero_small_gradients)
from fat_jax.attacks.prior import prior_guided_step, prior_reset
from fat_jax.data import (Augmentation, augment_with, draw_augmentation, to_batch_frame,
                          to_stored_frame)
from fat_jax.losses import accuracy, cross_entropy, smoothed_labels, soft_cross_entropy
from fat_jax.losses.aaer import aaer_regularizer
from fat_jax.losses.feature_diff import co_loss, stable_loss
from fat_jax.losses.gradalign import gradalign_regularizer
from fat_jax.losses.mart import mart_loss
from fat_jax.losses.mep import mep_loss
from fat_jax.losses.trades import trades_loss
from fat_jax.methods.spec import Method
from fat_jax.weight_perturbation import add_at_paths, awp_perturbation, lap_perturb


class TrainState(NamedTuple):
  """Everything a training step updates.

  `examples` is the per-example state of methods that keep one (FGSM-MEP's
  prior perturbation and momentum, ATAS's previous perturbation and gradient
  norm), with the training-set index as leading axis; {} otherwise.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  momentum: Any
  examples: Any = {}


def init_train_state(model, key, examples=None) -> TrainState:
  params, batch_stats = model.init(key)
  return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, optim.zero_buffers(params),
                    {} if examples is None else examples)


def init_examples(method: Method, num_examples: int, frame_shape: tuple[int, ...]) -> dict:
  """The per-example state of `method` for a training set of `num_examples` images.

  `frame_shape` is `fat_jax.data.stored_frame_shape` of the data set: image-space
  state lives on the padded canvas of the augmentation so that it follows each
  epoch's crop and flip. FGSM-MEP: prior P and momentum M (zeros); ATAS: the
  previous perturbation and the running squared gradient norm v (zeros); both:
  the reset period each row was last written in (−1: never, so the first read
  draws the perturbation).
  """
  # One buffer per leaf: the train step donates the state, and a buffer cannot be donated twice.
  never = jnp.full((num_examples,), -1, jnp.int32)
  zeros = lambda: jnp.zeros((num_examples, *frame_shape), jnp.float32)
  if method.mep is not None:
    return {'prior': zeros(), 'momentum': zeros(), 'period': never}
  if method.atas is not None:
    return {'delta': zeros(), 'grad_norm': jnp.zeros((num_examples,), jnp.float32),
            'period': never}
  return {}


class StartPoint(NamedTuple):
  """The attack's forward/backward at x + η (train-mode BatchNorm by default)."""
  eta: jax.Array
  logits: jax.Array
  features: dict
  state: Any                 # BatchNorm statistics after this forward
  grad_eta: jax.Array        # ∇_η of the mean start loss
  grad_params: Any           # ∇_w of the mean start loss (None unless asked for)
  pullback: Optional[Callable]  # (logits, {tapped node}) cotangents → (∇_w, ∇_η), or None


def start_point(model, params, state, x, eta, loss_fn: Callable, *, train: bool,
                with_params: bool, taps: tuple[str, ...] = ()) -> StartPoint:
  """One forward at x + η and one backward of mean `loss_fn(logits)`.

  With `with_params` the backward also gives ∇_w (LAP's proxy step) and the
  pullback is kept: it maps cotangents of the logits and of the features of the
  nodes in `taps`, ``(d_logits, {node: d_feature})``, to (∇_w, ∇_η), so a loss on
  f(x + η) or M(x + η) differentiates through this forward (FGSM-MEP's official
  code keeps its graph with ``retain_graph``).
  """
  def forward(params, eta):
    logits, new_state, features = model.apply(params, state, x + eta, train)
    return (logits, {node: features[node] for node in taps}), (new_state, features)

  if with_params:
    out, pullback, (new_state, features) = jax.vjp(forward, params, eta, has_aux=True)
  else:
    out, pull_eta, (new_state, features) = jax.vjp(lambda e: forward(params, e), eta,
                                                   has_aux=True)
    pullback = lambda d: (None, *pull_eta(d))
  logits, tapped = out
  d_logits = jax.grad(lambda z: loss_fn(z).mean())(logits)
  g_params, g_eta = pullback((d_logits, jax.tree.map(jnp.zeros_like, tapped)))
  return StartPoint(eta, logits, features, new_state, g_eta, g_params,
                    pullback if with_params else None)


def feature_taps(method: Method) -> tuple[str, ...]:
  """The nodes whose start-point features a loss of `method` differentiates through."""
  return tuple(sorted({spec.node for spec in (method.stable, method.co) if spec is not None}))


def pairs_with_start(method: Method) -> bool:
  """Whether the objective differentiates through the start forward (see the module doc)."""
  return method.mep is not None or bool(feature_taps(method))


def _gather(tree, indices):
  return jax.tree.map(lambda a: a[indices], tree)


def _scatter(tree, indices, rows):
  return jax.tree.map(lambda a, r: a.at[indices].set(r), tree, rows)


def _expand(v, x):
  """Per-example values (N,) broadcastable against x (N, ...)."""
  return v.reshape((-1,) + (1,) * (x.ndim - 1))


class _Adversarial(NamedTuple):
  """The attack stage's output."""
  delta: jax.Array           # stop-gradient perturbation of the training point
  start: Optional[StartPoint]
  state: Any                 # BatchNorm statistics after the attack's forwards
  rows: Any                  # updated per-example state of the batch
  metrics: Any = None        # the attack's own statistics to log (a dict) or None


def _mep_attack(model, method: Method, params, state, x, targets, key, rows, aug: Augmentation,
                period) -> _Adversarial:
  """FGSM-MEP's step from the stored prior P (re-drawn at each reset period) on the loss
  soft-CE(·, `targets`)."""
  spec, a = method.mep, method.attack
  stale = _expand(rows['period'] != period, x)
  fresh = prior_reset(key, rows['prior'].shape, eps=a.eps, alpha=a.alpha)
  stored_prior = jnp.where(stale, fresh, rows['prior'])
  stored_momentum = jnp.where(stale, 0.0, rows['momentum'])
  prior, momentum = (to_batch_frame(t, aug) for t in (stored_prior, stored_momentum))
  start = start_point(model, params, state, x, prior,
                      lambda z: soft_cross_entropy(z, targets), train=a.train_bn,
                      with_params=True, taps=feature_taps(method))
  delta, prior, momentum = prior_guided_step(x, prior, momentum, start.grad_eta, eps=a.eps,
                                             alpha=a.alpha, decay=spec.decay)
  rows = {'prior': to_stored_frame(stored_prior, prior, aug),
          'momentum': to_stored_frame(stored_momentum, momentum, aug),
          'period': jnp.full_like(rows['period'], period)}
  return _Adversarial(jax.lax.stop_gradient(delta), start, start.state, rows)


def _atas_reset_period(epoch, reset_every: int, num_epochs: int):
  """How many times the official loop has re-drawn the stored perturbations by (0-based)
  `epoch`: at the start of each 1-based epoch divisible by `reset_every`, except the last."""
  return jnp.minimum((epoch + 1) // reset_every, (num_epochs - 1) // reset_every)


def _atas_attack(model, method: Method, params, state, x, y, key, rows, aug: Augmentation,
                 epoch, period) -> _Adversarial:
  """ATAS's step from the stored previous perturbation (re-drawn U(−ε, ε) at each reset
  period): constant α for `warmup_epochs` epochs, then the per-example adaptive α."""
  spec, a = method.atas, method.attack
  stale = _expand(rows['period'] != period, x)
  fresh = jax.random.uniform(key, rows['delta'].shape, jnp.float32, -a.eps, a.eps)
  stored = jnp.where(stale, fresh, rows['delta'])
  eta = clip_to_box(x, to_batch_frame(stored, aug))
  start = start_point(model, params, state, x, eta, lambda z: cross_entropy(z, y),
                      train=a.train_bn, taps=feature_taps(method),
                      with_params=method.lap is not None or pairs_with_start(method))
  adaptive_alpha, adaptive_norm = atas_step_sizes(
      start.grad_eta, rows['grad_norm'], c=spec.c, beta=spec.beta, scale=spec.scale,
      min_step=spec.min_step, max_step=spec.max_step)
  adaptive = epoch >= spec.warmup_epochs
  alpha = jnp.where(adaptive, adaptive_alpha, a.alpha)
  delta = sign_step(x, eta, start.grad_eta, eps=a.eps, alpha=_expand(alpha, x))
  rows = {'delta': to_stored_frame(stored, delta, aug),
          'grad_norm': jnp.where(adaptive, adaptive_norm, rows['grad_norm']),
          'period': jnp.full_like(rows['period'], period)}
  metrics = {'atas_step': alpha.mean() / a.eps}
  return _Adversarial(jax.lax.stop_gradient(delta), start, start.state, rows, metrics)


def _forward_order(method: Method) -> tuple[str, ...]:
  """The training forwards ('clean': x, 'adv': x + δ, 'masked': x + δ with L_co's channels
  C_p zeroed) in the order of the official code; each updates the BatchNorm running
  statistics, and the loss uses the first of each kind.

  TRADES `trades_loss`: f(x), then f(x') and f(x) inside the KL; TRADES-AWP's loop: f(x'),
  f(x) (KL), f(x) (CE); MART: f(x), f(x'). L_co (no official code): f(x + δ), then the
  masked forward.
  """
  if method.co is not None:
    return ('adv', 'masked')
  if method.trades is not None:
    return ('adv', 'clean', 'clean') if method.awp is not None else ('clean', 'adv', 'clean')
  if method.mart is not None:
    return ('clean', 'adv')
  return ('adv',)


def _base_loss(method: Method, logits: dict, features: dict, labels, start_out, targets):
  """The objective before regularisers, and its terms to log (`features`: the adversarial
  forward's; `start_out`: the start forward's logits and tapped features). L_co (Eq. 9 of
  the feature-difference paper) is added to the method's own loss, not substituted for it."""
  loss, aux = _objective(method, logits, labels, start_out[0], targets)
  if method.co is not None:
    node = method.co.node
    co = co_loss(logits['masked'], labels, features[node], start_out[1][node],
                 method.co.indicator(), alpha3=method.co.alpha3,
                 saturation=method.co.saturation)
    aux.update(co_loss=co, co_difference=cross_entropy(logits['masked'], labels).mean() - co)
    loss += co
  return loss, aux


def _objective(method: Method, logits: dict, labels, start_logits, targets):
  """The method's own training loss and its terms to log."""
  if method.trades is not None:
    loss, terms = trades_loss(logits['clean'], logits['adv'], labels, beta=method.trades.beta)
    return loss, {'trades_natural': terms.natural, 'trades_robust': terms.robust}
  if method.mart is not None:
    loss, terms = mart_loss(logits['clean'], logits['adv'], labels, beta=method.mart.beta)
    return loss, {'mart_boosted_ce': terms.boosted_ce, 'mart_robust': terms.robust}
  if method.mep is not None:
    return mep_loss(logits['adv'], start_logits, targets, lam=method.mep.lam), {}
  return cross_entropy(logits['adv'], labels).mean(), {}


def _awp_deltas(loss_fn: Callable, params, paths, gamma: float, active):
  """AWP's v along ∇ `loss_fn` (the training objective in train-mode BN, its statistics
  discarded, as the official proxy model); a zero gradient while not `active` gives v = 0.

  The gradient is computed during the warm-up too (one pass per step, then discarded):
  under `lax.cond` XLA's CPU backend runs the convolutions an order of magnitude slower.
  """
  loss_grads = jax.tree.map(lambda g: jnp.where(active, g, 0.0), jax.grad(loss_fn)(params))
  return awp_perturbation(params, loss_grads, paths, gamma)


def make_train_step(model, method: Method, schedule: optim.Schedule, *, weight_decay: float,
                    augment_mode: str, key):
  """``train_step(state, images_uint8, labels, indices) -> (state, metrics)``, pure, jittable.

  `indices` are the examples' positions in the training set (for per-example
  state). The step's randomness is ``fold_in(key, state.step)``.
  """
  attack = method.attack
  num_classes = model.module.num_classes
  num_epochs = schedule.total_steps // schedule.steps_per_epoch
  forward_order = _forward_order(method)
  co_masks = None if method.co is None else {method.co.node: 1.0 - method.co.indicator()}

  def mep_targets(y):
    return smoothed_labels(y, num_classes, method.mep.label_smoothing)

  def adversarial(ts: TrainState, x, y, init_key, rows, aug) -> _Adversarial:
    if method.mep is not None:
      period = ts.step // (schedule.steps_per_epoch * method.mep.reset_every)
      return _mep_attack(model, method, ts.params, ts.batch_stats, x, mep_targets(y), init_key,
                         rows, aug, period)
    if method.atas is not None:
      epoch = ts.step // schedule.steps_per_epoch
      period = _atas_reset_period(epoch, method.atas.reset_every, num_epochs)
      return _atas_attack(model, method, ts.params, ts.batch_stats, x, y, init_key, rows, aug,
                          epoch, period)
    if attack.loss == 'kl':
      adv = kl_attack(model.apply, ts.params, ts.batch_stats, x, init_key, eps=attack.eps,
                      alpha=attack.alpha, steps=attack.steps, init=attack.init,
                      init_scale=attack.init_scale, train=attack.train_bn, unroll=True)
      return _Adversarial(adv.delta, None, adv.state, rows)
    if attack.steps > 1:
      adv = pgd_attack(model.apply, ts.params, ts.batch_stats, x, y, init_key, eps=attack.eps,
                       alpha=attack.alpha, steps=attack.steps, train=attack.train_bn,
                       freeze_misclassified=False, init=attack.init,
                       init_scale=attack.init_scale, unroll=True)
      state = adv.state
      if method.robust_overfitting_forwards:  # attack_pgd's restart-loss forward
        state = model.apply(ts.params, state, x + adv.delta, attack.train_bn)[1]
      return _Adversarial(adv.delta, None, state, rows)
    eta = init_perturbation(init_key, x, attack.eps, attack.init, attack.init_scale)
    start = start_point(model, ts.params, ts.batch_stats, x, eta,
                        lambda z: cross_entropy(z, y), train=attack.train_bn,
                        with_params=method.lap is not None or pairs_with_start(method),
                        taps=feature_taps(method))
    grad = start.grad_eta
    if method.zerograd is not None:
      grad = zero_small_gradients(grad, method.zerograd.q)
    delta = sign_step(x, eta, grad, eps=attack.eps, alpha=attack.alpha, project=attack.project)
    return _Adversarial(delta, start, start.state, rows)

  def train_step(ts: TrainState, images, labels, indices):
    step_key = jax.random.fold_in(key, ts.step)
    aug_key, init_key, align_key = jax.random.split(step_key, 3)
    aug = draw_augmentation(aug_key, images, mode=augment_mode)
    x = augment_with(aug, images)
    hyper = schedule(ts.step)
    adv = adversarial(ts, x, labels, init_key, _gather(ts.examples, indices), aug)
    params, state, metrics = ts.params, adv.state, dict(adv.metrics or {})
    if method.lap is not None:
      params, metrics['lap_norm'] = lap_perturb(
          params, adv.start.grad_params, ts.momentum, hyper, weight_decay,
          paths=model.weight_layer_order(params), beta=method.lap.beta,
          gamma=method.lap.gamma, ascent=method.lap.ascent)
    grad_clean = None if adv.start is None else adv.start.grad_eta
    if method.gradalign is not None and attack.init != 'zero':
      # GradAlign's first gradient is taken at x itself (free when the attack starts at 0).
      g = input_gradient(model.apply, params, state, x, labels, jnp.zeros_like(x), train=True)
      grad_clean, state = g.grad, g.state

    def objective(params, start_out):
      logits, features, new_state = {}, {}, state
      for name in forward_order:
        out, new_state, out_features = model.apply(
            params, new_state, x if name == 'clean' else x + adv.delta, True,
            masks=co_masks if name == 'masked' else None)
        logits.setdefault(name, out)
        features.setdefault(name, out_features)
      loss, aux = _base_loss(method, logits, features['adv'], labels, start_out,
                             None if method.mep is None else mep_targets(labels))
      aux.update(ce=cross_entropy(logits['adv'], labels).mean(),
                 accuracy=accuracy(logits['adv'], labels).mean())
      if method.aaer is not None:
        reg, stats = aaer_regularizer(start_out[0], logits['adv'], labels, **vars(method.aaer))
        loss += reg
        aux.update({f'aaer_{k}': v for k, v in stats._asdict().items()})
      if method.gradalign is not None:
        reg, (new_state, cos) = gradalign_regularizer(
            model.apply, params, new_state, x, labels, align_key, eps=attack.eps,
            grad_clean=grad_clean, lam=method.gradalign.lam)
        loss += reg
        aux.update(gradalign_cos=cos, gradalign_reg=reg)
      if method.stable is not None:
        node = method.stable.node
        reg = stable_loss(features['adv'][node], start_out[1][node], alpha3=method.stable.alpha3)
        loss += reg
        aux['stable_loss'] = reg
      return loss, (new_state, {**aux, 'loss': loss})

    start_out = (None, {}) if adv.start is None else (
        adv.start.logits, {node: adv.start.features[node] for node in feature_taps(method)})
    if method.awp is not None:
      active = ts.step >= method.awp.warmup_epochs * schedule.steps_per_epoch
      paths = model.weight_layer_order(params)
      awp_deltas = _awp_deltas(lambda p: objective(p, start_out)[0], params, paths,
                               method.awp.gamma, active)
      params = add_at_paths(params, paths, awp_deltas)
      metrics['awp_norm'] = jnp.sqrt(sum(jnp.sum(d ** 2) for d in awp_deltas))
    if pairs_with_start(method):  # the loss also differentiates through f(x + η), M(x + η)
      (grads, d_start), (batch_stats, aux) = jax.grad(objective, argnums=(0, 1), has_aux=True)(
          params, start_out)
      grads = jax.tree.map(jnp.add, grads, adv.start.pullback(d_start)[0])
    else:
      grads, (batch_stats, aux) = jax.grad(objective, has_aux=True)(params, start_out)
    params, momentum = optim.sgd_update(params, grads, ts.momentum, hyper, weight_decay)
    if method.awp is not None:
      params = add_at_paths(params, paths, awp_deltas, sign=-1.0)
    if method.robust_overfitting_forwards:  # the official loop's clean-accuracy forward
      clean_logits, batch_stats, _ = model.apply(params, batch_stats, x, True)
      metrics['clean_accuracy'] = accuracy(clean_logits, labels).mean()
    metrics.update(aux, lr=hyper.lr, momentum=hyper.momentum)
    examples = _scatter(ts.examples, indices, adv.rows)
    return TrainState(ts.step + 1, params, batch_stats, momentum, examples), metrics

  return train_step
