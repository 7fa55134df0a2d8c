"""The training attacks: ``attack(model, params, state, x, y, key, rows, aug, clock, *,
with_params, taps) -> Adversarial`` (δ, the start forward when it has one, the BatchNorm
statistics after its forwards, its per-example state).

`FGSMAttack` (start × sign step × projection, with an optional `ZeroGrad` mask of ∇δ),
`PriorAttack` (FGSM-MEP), `AdaptiveAttack` (ATAS), `PGDAttack`, `DynamicAttack` (DART: PGD
stopped per example by FOSC), `KLAttack` (TRADES). Each is a frozen, hashable dataclass (a
static jit argument); its `init_examples` gives the per-example state it keeps. An attack may
also return per-example loss weights (`Adversarial.example_weights`, DART's official
weighting). The train step, the loss landscape and the report call the same value.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from fat_jax.attacks import (atas_step_sizes, clip_to_box, dart_attack, dart_threshold,
                             init_perturbation, kl_attack, per_example, pgd_attack, sign_step,
                             zero_small_gradients)
from fat_jax.attacks.prior import prior_guided_step, prior_reset
from fat_jax.data import to_batch_frame, to_stored_frame
from fat_jax.losses import cross_entropy, smoothed_labels, soft_cross_entropy
from fat_jax.losses.dart import dart_example_weights
from fat_jax.losses.mep import MEP_TRUE_PROB
from fat_jax.methods.records import Adversarial, Clock, StartPoint


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


class TrainingAttack:
  """The training-attack interface (see the module doc); attacks that keep no per-example
  state inherit `init_examples`."""
  has_start = False   # whether it returns its start forward (LAP, AAER, L_stable, L_co need it)

  def init_examples(self, num_examples: int, frame_shape) -> dict:
    """The per-example state for a training set of `num_examples` (image-space state on the
    padded canvas `frame_shape` of the augmentation, `fat_jax.data.stored_frame_shape`)."""
    del num_examples, frame_shape
    return {}


@dataclasses.dataclass(frozen=True)
class ZeroGrad:
  """ZeroGrad (`rohban-lab/catastrophic_overfitting`): zero the input-gradient coordinates
  below the per-example q-quantile of |∇| before the step."""
  q: float = 0.35


def step_warmup(clock: Clock, epochs: float) -> jax.Array:
  """w = min((epoch + i/steps_per_epoch)/epochs, 1) at batch i of the (0-based) epoch: the
  warm-up of the attack step in `tmllab/2023_NeurIPS_AAER` ``SVHN/AAER.py``
  (``min((epoch + i/len(train_loader))/5, 1)``)."""
  epoch, i = clock.step // clock.steps_per_epoch, clock.step % clock.steps_per_epoch
  return jnp.minimum((epoch + i / clock.steps_per_epoch) / epochs, 1.0)


@dataclasses.dataclass(frozen=True)
class FGSMAttack(TrainingAttack):
  """The FGSM family: δ = box(Π_ε(η + α·sign ∇_η CE)) from η = `init` (zero, U(±init_scale·ε),
  init_scale·N(0, I)); no Π_ε when not `project` (N-FGSM); ∇_η masked by `zerograd`. With
  `warmup_epochs` W > 0 the step is w·α and the projection Π_{w·ε}, w = `step_warmup` (the
  start η is not scaled), as ``SVHN/AAER.py`` (``delta + alpha·sign(grad)·warm_up``, then
  ``clamp(delta, −ε·warm_up, ε·warm_up)`` with ``--clamp 1``)."""
  eps: float
  alpha: float
  init: str = 'zero'
  init_scale: float = 1.0
  project: bool = True
  train_bn: bool = True
  zerograd: Optional[ZeroGrad] = None
  warmup_epochs: float = 0.0
  steps = 1
  loss = 'ce'
  has_start = True

  def __call__(self, model, params, state, x, y, key, rows, aug, clock: Clock, *,
               with_params: bool = False, taps: tuple[str, ...] = ()) -> Adversarial:
    del aug
    eta = init_perturbation(key, x, self.eps, self.init, self.init_scale)
    start = start_point(model, params, state, x, eta, lambda z: cross_entropy(z, y),
                        train=self.train_bn, with_params=with_params, taps=taps)
    grad = start.grad_eta
    if self.zerograd is not None:
      grad = zero_small_gradients(grad, self.zerograd.q)
    eps, alpha = self.eps, self.alpha
    if self.warmup_epochs:
      warmup = step_warmup(clock, self.warmup_epochs)
      eps, alpha = eps * warmup, alpha * warmup
    delta = sign_step(x, eta, grad, eps=eps, alpha=alpha, project=self.project)
    clean = start.grad_eta if self.init == 'zero' else None
    return Adversarial(delta, start, start.state, rows, clean_gradient=clean)


@dataclasses.dataclass(frozen=True)
class PriorAttack(TrainingAttack):
  """FGSM-MEP (`jiaxiaojunQAQ/FGSM-PGI FGSM_MEP.py`): the step from the stored per-example
  prior P (re-drawn every `reset_every` epochs) on soft-CE(·, smoothed labels), and the prior's
  momentum update with `decay`."""
  eps: float
  alpha: float
  label_smoothing: float = MEP_TRUE_PROB  # probability of the true class
  decay: float = 0.3
  reset_every: int = 40          # epochs
  train_bn: bool = True
  init = 'prior'
  init_scale = 1.0
  project = True
  steps = 1
  loss = 'ce'
  has_start = True

  def init_examples(self, num_examples: int, frame_shape) -> dict:
    """Prior P and momentum M (zeros) and the reset period each row was last written in
    (−1: never, so the first read draws P). One buffer per leaf: the step donates them."""
    zeros = lambda: jnp.zeros((num_examples, *frame_shape), jnp.float32)
    return {'prior': zeros(), 'momentum': zeros(),
            'period': jnp.full((num_examples,), -1, jnp.int32)}

  def __call__(self, model, params, state, x, y, key, rows, aug, clock: Clock, *,
               with_params: bool = False, taps: tuple[str, ...] = ()) -> Adversarial:
    del with_params  # the objective pairs with the start forward: the pullback is always kept
    period = clock.step // (clock.steps_per_epoch * self.reset_every)
    targets = smoothed_labels(y, model.module.num_classes, self.label_smoothing)
    stale = per_example(rows['period'] != period, x)
    fresh = prior_reset(key, rows['prior'].shape, eps=self.eps, alpha=self.alpha)
    stored_prior = jnp.where(stale, fresh, rows['prior'])
    stored_momentum = jnp.where(stale, 0.0, rows['momentum'])
    prior, momentum = (to_batch_frame(t, aug) for t in (stored_prior, stored_momentum))
    start = start_point(model, params, state, x, prior,
                        lambda z: soft_cross_entropy(z, targets), train=self.train_bn,
                        with_params=True, taps=taps)
    delta, prior, momentum = prior_guided_step(x, prior, momentum, start.grad_eta, eps=self.eps,
                                               alpha=self.alpha, decay=self.decay)
    rows = {'prior': to_stored_frame(stored_prior, prior, aug),
            'momentum': to_stored_frame(stored_momentum, momentum, aug),
            'period': jnp.full_like(rows['period'], period)}
    return Adversarial(jax.lax.stop_gradient(delta), start, start.state, rows)


def atas_reset_period(epoch, reset_every: int, num_epochs: int):
  """How many times the official loop has re-drawn the stored perturbations by (0-based)
  `epoch`: at the start of each 1-based epoch divisible by `reset_every`, except the last."""
  return jnp.minimum((epoch + 1) // reset_every, (num_epochs - 1) // reset_every)


@dataclasses.dataclass(frozen=True)
class AdaptiveAttack(TrainingAttack):
  """ATAS (`HuangZhiChao95/ATAS`): per-example step clip(scale/(1 + √v/c), min, max) from the
  stored previous perturbation (absolute step sizes), after `warmup_epochs` epochs of the
  constant step `alpha`; the stored perturbation is re-drawn every `reset_every` epochs."""
  eps: float
  alpha: float
  min_step: float
  max_step: float
  scale: float
  c: float = 0.01
  beta: float = 0.5
  warmup_epochs: int = 5
  reset_every: int = 10
  train_bn: bool = False
  init = 'previous'
  init_scale = 1.0
  project = True
  steps = 1
  loss = 'ce'
  has_start = True

  def init_examples(self, num_examples: int, frame_shape) -> dict:
    """The previous perturbation and the running squared gradient norm v (zeros), and the
    reset period of each row (−1: never, so the first read draws the perturbation)."""
    return {'delta': jnp.zeros((num_examples, *frame_shape), jnp.float32),
            'grad_norm': jnp.zeros((num_examples,), jnp.float32),
            'period': jnp.full((num_examples,), -1, jnp.int32)}

  def __call__(self, model, params, state, x, y, key, rows, aug, clock: Clock, *,
               with_params: bool = False, taps: tuple[str, ...] = ()) -> Adversarial:
    epoch = clock.epoch
    period = atas_reset_period(epoch, self.reset_every, clock.num_epochs)
    stale = per_example(rows['period'] != period, x)
    fresh = jax.random.uniform(key, rows['delta'].shape, jnp.float32, -self.eps, self.eps)
    stored = jnp.where(stale, fresh, rows['delta'])
    eta = clip_to_box(x, to_batch_frame(stored, aug))
    start = start_point(model, params, state, x, eta, lambda z: cross_entropy(z, y),
                        train=self.train_bn, taps=taps, with_params=with_params)
    adaptive_alpha, adaptive_norm = atas_step_sizes(
        start.grad_eta, rows['grad_norm'], c=self.c, beta=self.beta, scale=self.scale,
        min_step=self.min_step, max_step=self.max_step)
    adaptive = epoch >= self.warmup_epochs
    alpha = jnp.where(adaptive, adaptive_alpha, self.alpha)
    delta = sign_step(x, eta, start.grad_eta, eps=self.eps, alpha=per_example(alpha, x))
    rows = {'delta': to_stored_frame(stored, delta, aug),
            'grad_norm': jnp.where(adaptive, adaptive_norm, rows['grad_norm']),
            'period': jnp.full_like(rows['period'], period)}
    metrics = {'atas_step': alpha.mean() / self.eps}
    return Adversarial(jax.lax.stop_gradient(delta), start, start.state, rows, metrics)


@dataclasses.dataclass(frozen=True)
class PGDAttack(TrainingAttack):
  """PGD-k on the CE from η = `init`, step α, Π_ε after every step. `restart_forward` replays
  `locuslab/robust_overfitting`'s extra train-mode forward at x + δ (the restart loss)."""
  eps: float
  alpha: float
  steps: int
  init: str = 'uniform'
  init_scale: float = 1.0
  train_bn: bool = True
  restart_forward: bool = False
  project = True
  loss = 'ce'
  has_start = False

  def __call__(self, model, params, state, x, y, key, rows, aug, clock: Clock, *,
               with_params: bool = False, taps: tuple[str, ...] = ()) -> Adversarial:
    del aug, clock, with_params, taps
    adv = pgd_attack(model.apply, params, state, x, y, key, eps=self.eps, alpha=self.alpha,
                     steps=self.steps, train=self.train_bn, freeze_misclassified=False,
                     init=self.init, init_scale=self.init_scale, unroll=True)
    state = adv.state
    if self.restart_forward:  # attack_pgd's restart-loss forward
      state = model.apply(params, state, x + adv.delta, self.train_bn)[1]
    return Adversarial(adv.delta, None, state, rows)


@dataclasses.dataclass(frozen=True)
class DynamicAttack(TrainingAttack):
  """Dynamic AT's attack (DART; Wang et al., ICML 2019, `YisenWang/dynamic_adv_training`):
  PGD-k on the CE from U(−ε, ε) whose examples stop moving once their FOSC is ≤ c_t, with
  c_t = max(c_max − c_max·t/T', 0) at 0-based epoch t (`dart_attack`, `dart_threshold`). The
  official settings: α = ε/4, k = 10, the first step always taken (`min_steps=1`), forwards in
  inference-mode BatchNorm. Logs c_t, the mean number of steps taken and the mean loss weight.

  `weighting='ce'` (the official ``train_models.py``): from 0-based epoch 1 on, each
  example's training CE is weighted by its own CE at the DART point, −log(p_y + 10⁻¹²) of one
  more inference-mode forward, without gradient (`losses.dart.dart_example_weights`); epoch 0
  weighs every example 1. `'none'`: no weights (the plain mean CE)."""
  eps: float
  alpha: float
  steps: int = 10
  c_max: float = 0.5
  control_epochs: float = 100.0
  min_steps: int = 1
  init: str = 'uniform'
  init_scale: float = 1.0
  train_bn: bool = False
  weighting: str = 'ce'
  project = True
  loss = 'ce'
  has_start = False
  WEIGHTINGS = ('ce', 'none')
  WEIGHTED_FROM_EPOCH = 1   # the official ``if ep == 0: train_on_batch(...)`` without weights

  def __post_init__(self):
    if self.weighting not in self.WEIGHTINGS:
      raise ValueError(f'DART weighting must be one of {self.WEIGHTINGS} (method.dart.weighting),'
                       f' got {self.weighting!r}.')

  def threshold(self, clock: Clock):
    """c_t of the step's epoch."""
    return dart_threshold(clock.epoch, c_max=self.c_max, control_epochs=self.control_epochs)

  def __call__(self, model, params, state, x, y, key, rows, aug, clock: Clock, *,
               with_params: bool = False, taps: tuple[str, ...] = ()) -> Adversarial:
    del aug, with_params, taps
    threshold = self.threshold(clock)
    adv = dart_attack(model.apply, params, state, x, y, key, eps=self.eps, alpha=self.alpha,
                      steps=self.steps, threshold=threshold, min_steps=self.min_steps,
                      train=self.train_bn, init=self.init, init_scale=self.init_scale,
                      unroll=True)
    metrics = {'dart_threshold': jnp.asarray(threshold, jnp.float32),
               'dart_steps': adv.steps.mean()}
    weights = None
    if self.weighting == 'ce':  # the official ``model.predict(batch_advs)``: inference mode
      logits = model.apply(params, adv.state, x + adv.delta, False)[0]
      weights = jnp.where(clock.epoch >= self.WEIGHTED_FROM_EPOCH,
                          dart_example_weights(logits, y), 1.0)
      metrics['dart_weight'] = weights.mean()
    return Adversarial(adv.delta, None, adv.state, rows, metrics, example_weights=weights)


@dataclasses.dataclass(frozen=True)
class KLAttack(TrainingAttack):
  """TRADES' attack (`yaodongyu/TRADES`): `steps` sign steps on KL(p(x) ‖ p(x + δ)) from
  η = init_scale·N(0, I)."""
  eps: float
  alpha: float
  steps: int
  init: str = 'normal'
  init_scale: float = 0.001
  train_bn: bool = False
  project = True
  loss = 'kl'
  has_start = False

  def __call__(self, model, params, state, x, y, key, rows, aug, clock: Clock, *,
               with_params: bool = False, taps: tuple[str, ...] = ()) -> Adversarial:
    del y, aug, clock, with_params, taps
    adv = kl_attack(model.apply, params, state, x, key, eps=self.eps, alpha=self.alpha,
                    steps=self.steps, init=self.init, init_scale=self.init_scale,
                    train=self.train_bn, unroll=True)
    return Adversarial(adv.delta, None, adv.state, rows)
