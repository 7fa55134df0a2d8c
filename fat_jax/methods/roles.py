"""The values a training method is composed from, one interface per role.

A `Method` (`methods.spec`) is

    Method(attack=<training attack>, objective=<exactly one objective>,
           regularizers=(<term>, ...), weights=<LAP | AWP | None>)

and the optax optimiser is given to `make_train_step`. Each value is a frozen,
hashable dataclass (a static jit argument) that carries its own computation:

* a **training attack** ``attack(model, params, state, x, y, key, rows, aug, clock, *,
  with_params, taps) -> Adversarial`` (δ, the start forward when it has one, the
  BatchNorm statistics after its forwards, its per-example state):
  `FGSMAttack` (start × sign step × projection, with an optional `ZeroGrad` mask
  of ∇δ), `PriorAttack` (FGSM-MEP), `AdaptiveAttack` (ATAS), `PGDAttack`,
  `DynamicAttack` (DART: PGD stopped per example by FOSC), `KLAttack` (TRADES). Its
  `init_examples` gives the per-example state it keeps. An attack may also return
  per-example loss weights (`Adversarial.example_weights`, DART's official weighting).
  The train step, the loss landscape and the report call the same value.
* an **objective** ``objective(logits, labels, start_logits) -> (loss, terms)``
  on the training forwards it names (`forward_order`): `CrossEntropy`,
  `MEPObjective`, `TRADES`, `MART`, `MMA`. `CrossEntropy` also takes
  ``example_weights=`` (the step passes the attack's weights when it returns some).
* **regularisers** ``term(inputs: TermInputs) -> (value, terms, state)``, added to
  the objective: `AAER`, `GradAlign`, `LStable`, `LCo`. A term declares the
  start-point features it differentiates through (`taps`), whether it needs the
  attack's start forward (`needs_start`) and the channel masks of an
  adversarial forward (`masks`).
* a **weight perturbation** ``weights.apply(params, ...) -> (params, undo, metrics)``
  and ``weights.undo(params, paths, undo)``: `LAP` (kept), `AWP` (removed after
  the optimiser step).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks import (atas_step_sizes, clip_to_box, dart_attack, dart_threshold,
                             init_perturbation, input_gradient, kl_attack, pgd_attack, sign_step,
                             zero_small_gradients)
from fat_jax.attacks.prior import prior_guided_step, prior_reset
from fat_jax.data import to_batch_frame, to_stored_frame
from fat_jax.losses import cross_entropy, smoothed_labels, soft_cross_entropy
from fat_jax.losses.aaer import aaer_regularizer
from fat_jax.losses.dart import dart_example_weights, keras_cross_entropy, keras_weighted_mean
from fat_jax.losses.feature_diff import STABLE_ALPHA3, co_loss, stable_loss
from fat_jax.losses.gradalign import gradalign_regularizer, gradient_through_box_clamp
from fat_jax.losses.mart import mart_loss
from fat_jax.losses.mep import mep_loss
from fat_jax.losses.mma import mma_loss
from fat_jax.losses.trades import trades_loss
from fat_jax.weight_perturbation import add_at_paths, awp_perturbation, lap_perturb


# ----------------------------------------------------------------------------- shared records

class Clock(NamedTuple):
  """Where a step is in the run: the step (traced), the epoch length and the number of epochs."""
  step: jax.Array
  steps_per_epoch: int
  num_epochs: int

  @property
  def epoch(self):
    return self.step // self.steps_per_epoch


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


class Adversarial(NamedTuple):
  """A training attack's output."""
  delta: jax.Array           # stop-gradient perturbation of the training point
  start: Optional[StartPoint]
  state: Any                 # BatchNorm statistics after the attack's forwards
  rows: Any                  # updated per-example state of the batch
  metrics: Any = None        # the attack's own statistics to log (a dict) or None
  clean_gradient: Any = None  # ∇_x of the CE at x itself when the attack took it (zero start)
  example_weights: Any = None  # (N,) per-example weights of the training loss (no gradient)


def _expand(v, x):
  """Per-example values (N,) broadcastable against x (N, ...)."""
  return v.reshape((-1,) + (1,) * (x.ndim - 1))


# ----------------------------------------------------------------------------- training attacks

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


@dataclasses.dataclass(frozen=True)
class FGSMAttack(TrainingAttack):
  """The FGSM family: δ = box(Π_ε(η + α·sign ∇_η CE)) from η = `init` (zero, U(±init_scale·ε),
  init_scale·N(0, I)); no Π_ε when not `project` (N-FGSM); ∇_η masked by `zerograd`."""
  eps: float
  alpha: float
  init: str = 'zero'
  init_scale: float = 1.0
  project: bool = True
  train_bn: bool = True
  zerograd: Optional[ZeroGrad] = None
  steps = 1
  loss = 'ce'
  has_start = True

  def __call__(self, model, params, state, x, y, key, rows, aug, clock: Clock, *,
               with_params: bool = False, taps: tuple[str, ...] = ()) -> Adversarial:
    del aug, clock
    eta = init_perturbation(key, x, self.eps, self.init, self.init_scale)
    start = start_point(model, params, state, x, eta, lambda z: cross_entropy(z, y),
                        train=self.train_bn, with_params=with_params, taps=taps)
    grad = start.grad_eta
    if self.zerograd is not None:
      grad = zero_small_gradients(grad, self.zerograd.q)
    delta = sign_step(x, eta, grad, eps=self.eps, alpha=self.alpha, project=self.project)
    clean = start.grad_eta if self.init == 'zero' else None
    return Adversarial(delta, start, start.state, rows, clean_gradient=clean)


@dataclasses.dataclass(frozen=True)
class PriorAttack(TrainingAttack):
  """FGSM-MEP (`jiaxiaojunQAQ/FGSM-PGI FGSM_MEP.py`): the step from the stored per-example
  prior P (re-drawn every `reset_every` epochs) on soft-CE(·, smoothed labels), and the prior's
  momentum update with `decay`."""
  eps: float
  alpha: float
  label_smoothing: float = 0.6   # probability of the true class (the official `--factor`)
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
    stale = _expand(rows['period'] != period, x)
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
    stale = _expand(rows['period'] != period, x)
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
    delta = sign_step(x, eta, start.grad_eta, eps=self.eps, alpha=_expand(alpha, x))
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
  control_epochs: float = 100
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
      raise ValueError(f'DART weighting must be one of {self.WEIGHTINGS} (method.dart_weighting),'
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


# ----------------------------------------------------------------------------- objectives

@dataclasses.dataclass(frozen=True)
class CrossEntropy:
  """CE(f(x + δ), y): the mean, or with per-example `example_weights` w (no gradient) DART's
  official training loss, Keras 2.2's sample-weighted mean Σ_i w_i·CE_i / #{i : w_i ≠ 0}
  (`losses.dart.keras_weighted_mean`) of the CE with p clipped to [10⁻⁷, 1 − 10⁻⁷]
  (`losses.dart.keras_cross_entropy`)."""
  pairs_with_start = False

  def forward_order(self, awp: bool) -> tuple[str, ...]:
    del awp
    return ('adv',)

  def __call__(self, logits: dict, labels, start_logits, example_weights=None):
    del start_logits
    if example_weights is None:
      return cross_entropy(logits['adv'], labels).mean(), {}
    ce = keras_cross_entropy(logits['adv'], labels)
    return keras_weighted_mean(ce, jax.lax.stop_gradient(example_weights)), {}


@dataclasses.dataclass(frozen=True)
class MEPObjective:
  """FGSM-MEP's loss: soft-CE(f(x + δ), smoothed labels) + λ·MSE(f(x + δ), f(x + P)),
  differentiated through the start forward f(x + P)."""
  label_smoothing: float = 0.6
  lam: float = 10.0
  pairs_with_start = True

  def forward_order(self, awp: bool) -> tuple[str, ...]:
    del awp
    return ('adv',)

  def __call__(self, logits: dict, labels, start_logits):
    targets = smoothed_labels(labels, logits['adv'].shape[-1], self.label_smoothing)
    return mep_loss(logits['adv'], start_logits, targets, lam=self.lam), {}


@dataclasses.dataclass(frozen=True)
class TRADES:
  """TRADES (`yaodongyu/TRADES`): CE(f(x)) + β·KL(p(x) ‖ p(x + δ))."""
  beta: float = 6.0
  pairs_with_start = False

  def forward_order(self, awp: bool) -> tuple[str, ...]:
    """`trades_loss`: f(x), then f(x') and f(x) inside the KL; TRADES-AWP's loop: f(x'), f(x)
    (KL), f(x) (CE). Each forward updates the BatchNorm running statistics."""
    return ('adv', 'clean', 'clean') if awp else ('clean', 'adv', 'clean')

  def __call__(self, logits: dict, labels, start_logits):
    del start_logits
    loss, terms = trades_loss(logits['clean'], logits['adv'], labels, beta=self.beta)
    return loss, {'trades_natural': terms.natural, 'trades_robust': terms.robust}


class _CleanThenAdversarial:
  """An objective on f(x), then f(x + δ), with or without AWP (MART's official loop; MMA)."""
  pairs_with_start = False

  def forward_order(self, awp: bool) -> tuple[str, ...]:
    del awp
    return ('clean', 'adv')


@dataclasses.dataclass(frozen=True)
class MART(_CleanThenAdversarial):
  """MART (`YisenWang/MART`): BCE(f(x + δ)) + β·KL(p(x) ‖ p(x + δ))·(1 − p_y(x))."""
  beta: float = 5.0

  def __call__(self, logits: dict, labels, start_logits):
    del start_logits
    loss, terms = mart_loss(logits['clean'], logits['adv'], labels, beta=self.beta)
    return loss, {'mart_boosted_ce': terms.boosted_ce, 'mart_robust': terms.robust}


@dataclasses.dataclass(frozen=True)
class MMA(_CleanThenAdversarial):
  """MMA (Ding et al., ICLR 2020) in the lecture's surrogate-loss form: CE(f(x + δ)) on the
  points f classifies correctly at x, CE(f(x)) on the others (`losses.mma.mma_loss`)."""

  def __call__(self, logits: dict, labels, start_logits):
    del start_logits
    loss, terms = mma_loss(logits['clean'], logits['adv'], labels)
    return loss, {'mma_adversarial': terms.adversarial, 'mma_clean': terms.clean,
                  'mma_correct': terms.correct}


# ----------------------------------------------------------------------------- regularisers

class Regularizer:
  """The regulariser interface (see the module doc): ``term(inputs, prepared)`` where
  `prepared` is what `prepare` computed before the training forwards (default: nothing)."""
  taps: tuple[str, ...] = ()
  needs_start = False

  def masks(self):
    """Channel masks of an extra forward at x + δ ({node: (C,) 0/1}) or None."""
    return None

  def prepare(self, model, params, state, x, labels, adv: Adversarial):
    """(a value computed before the training forwards, the BatchNorm statistics after it)."""
    del model, params, x, labels, adv
    return None, state


class TermInputs(NamedTuple):
  """What a regulariser may read: the model and weights it differentiates, the BatchNorm
  statistics after the training forwards, the batch, the attack's output and the forwards'
  logits ({'adv', 'clean'}) and adversarial features, the start forward's logits and tapped
  features, and a per-step key."""
  model: Any
  params: Any
  state: Any
  x: jax.Array
  labels: jax.Array
  key: jax.Array
  eps: float
  adv: Adversarial
  logits: dict
  features: dict
  start_logits: Any
  start_features: dict


@dataclasses.dataclass(frozen=True)
class AAER(Regularizer):
  """AAER (NeurIPS 2023): λ1·(λ2·C_A + λ3·max(V_A − V_N, 0)) from the start and adversarial
  logits (see `losses.aaer`)."""
  lambda1: float
  lambda2: float
  lambda3: float
  differentiable_loss_variation: bool = False
  needs_start = True

  def __call__(self, i: TermInputs, prepared=None):
    del prepared
    reg, stats = aaer_regularizer(i.start_logits, i.logits['adv'], i.labels,
                                  **dataclasses.asdict(self))
    return reg, {f'aaer_{k}': v for k, v in stats._asdict().items()}, i.state


@dataclasses.dataclass(frozen=True)
class GradAlign(Regularizer):
  """GradAlign (Andriushchenko & Flammarion 2020): λ·(1 − cos(∇_x ℓ(x), ∇_x ℓ(x + η))),
  η ~ U(±ε). ∇_x ℓ(x) is the attack's own gradient when it starts at x, taken through the
  official FGSM forward's box clamp (`gradient_through_box_clamp`), else one more train-mode
  forward/backward at x (before the training forwards; the official one has no clamp)."""
  lam: float

  def prepare(self, model, params, state, x, labels, adv: Adversarial):
    """(∇_x ℓ(x) as a constant, the BatchNorm statistics after it)."""
    if adv.clean_gradient is not None:
      return gradient_through_box_clamp(adv.clean_gradient, x), state
    g = input_gradient(model.apply, jax.lax.stop_gradient(params), state, x, labels,
                       jnp.zeros_like(x), train=True)
    return g.grad, g.state

  def __call__(self, i: TermInputs, prepared=None):
    grad_clean = prepared
    reg, (state, cos) = gradalign_regularizer(
        i.model.apply, i.params, i.state, i.x, i.labels, i.key, eps=i.eps,
        grad_clean=grad_clean, lam=self.lam)
    return reg, {'gradalign_cos': cos, 'gradalign_reg': reg}, state


@dataclasses.dataclass(frozen=True)
class LStable(Regularizer):
  """L_stable (Eq. 8 of the feature-difference paper): α3 × the activation difference of
  `node` between the adversarial point and the attack's start point."""
  alpha3: float = STABLE_ALPHA3
  node: str = 'B'
  needs_start = True

  @property
  def taps(self) -> tuple[str, ...]:
    return (self.node,)

  def __call__(self, i: TermInputs, prepared=None):
    del prepared
    reg = stable_loss(i.features[self.node], i.start_features[self.node], alpha3=self.alpha3)
    return reg, {'stable_loss': reg}, i.state


@dataclasses.dataclass(frozen=True)
class LCo(Regularizer):
  """L_co (Eq. 9 of the feature-difference paper), added to the method's own objective: the CE
  of a second forward at x + δ with the channels C_p of `node` masked, minus α3·L_stable on C_p
  between the unmasked adversarial forward and the start forward. `channels`: the indices of C_p
  (the top `percent`% by T_act of `tact_file`) among `num_channels`."""
  channels: tuple[int, ...]
  num_channels: int
  node: str = 'B'
  alpha3: float = STABLE_ALPHA3
  saturation: float = 0.0     # 0: Eq. 9 as written; a > 0: bounded (losses.feature_diff.co_loss)
  percent: float = 10.0
  tact_file: str = ''
  needs_start = True

  @property
  def taps(self) -> tuple[str, ...]:
    return (self.node,)

  def indicator(self) -> np.ndarray:
    """The 0/1 indicator (C,) of C_p."""
    out = np.zeros((self.num_channels,), np.float32)
    out[list(self.channels)] = 1.0
    return out

  def masks(self):
    """Channel masks of the extra 'masked' forward at x + δ."""
    return {self.node: 1.0 - self.indicator()}

  def __call__(self, i: TermInputs, prepared=None):
    del prepared
    co = co_loss(i.logits['masked'], i.labels, i.features[self.node],
                 i.start_features[self.node], self.indicator(), alpha3=self.alpha3,
                 saturation=self.saturation or None)
    masked_ce = cross_entropy(i.logits['masked'], i.labels).mean()
    return co, {'co_loss': co, 'co_difference': masked_ce - co}, i.state


# ----------------------------------------------------------------------------- weights

@dataclasses.dataclass(frozen=True)
class LAP:
  """LAP (ICML 2024): the optimiser's own update on the start-point gradient, per layer
  β·λ_l·‖w_l‖-scaled, added to the weights and kept (`weight_perturbation.lap_perturb`)."""
  beta: float
  gamma: float = 0.3
  ascent: bool = False      # labelled AWP-style variant; the official code descends
  needs_start = True

  def apply(self, params, *, start: StartPoint, loss_fn, tx, opt_state, paths, clock: Clock):
    del loss_fn, clock
    params, norms = lap_perturb(params, start.grad_params, tx, opt_state, paths=paths,
                                beta=self.beta, gamma=self.gamma, ascent=self.ascent)
    return params, None, {'lap_norm': norms}

  def undo(self, params, paths, undo):
    del paths, undo
    return params


@dataclasses.dataclass(frozen=True)
class AWP:
  """AWP (`csdongxian/AWP`): v_l = γ·‖w_l‖·∇_l/‖∇_l‖ on every kernel along ∇ of the training
  objective (train-mode BN, its statistics discarded, as the official proxy model), added for
  the step and removed after it; v = 0 during the first `warmup_epochs` epochs.

  The gradient is computed during the warm-up too (one pass per step, then discarded):
  under `lax.cond` XLA's CPU backend runs the convolutions an order of magnitude slower.
  """
  gamma: float
  warmup_epochs: int = 0
  needs_start = False

  def apply(self, params, *, start, loss_fn, tx, opt_state, paths, clock: Clock):
    del start, tx, opt_state
    active = clock.step >= self.warmup_epochs * clock.steps_per_epoch
    loss_grads = jax.tree.map(lambda g: jnp.where(active, g, 0.0), jax.grad(loss_fn)(params))
    deltas = awp_perturbation(params, loss_grads, paths, self.gamma)
    norm = jnp.sqrt(sum(jnp.sum(d ** 2) for d in deltas))
    return add_at_paths(params, paths, deltas), deltas, {'awp_norm': norm}

  def undo(self, params, paths, undo):
    return add_at_paths(params, paths, undo, sign=-1.0)

