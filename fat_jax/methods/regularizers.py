"""The regularisers added to the objective: ``term(inputs: TermInputs, prepared) -> (value,
terms, state)``: `AAER`, `GradAlign`, `ELLE`, `LStable`, `LCo`. A term declares the start-point
features it differentiates through (`taps`), whether it needs the training attack's start
forward (`needs_start`), the channel masks of an adversarial forward (`masks`) and the state
it keeps across steps (`init_carry`, `next_carry`; the `TrainState`'s `regularizer_state`). Each
is a frozen, hashable dataclass (a static jit argument)."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks import input_gradient
from fat_jax.losses import accuracy, cross_entropy
from fat_jax.losses.aaer import aaer_regularizer
from fat_jax.losses.elle import (adaptive_lambda_update, elle_points, init_adaptive_lambda,
                                 linearity_error)
from fat_jax.losses.feature_diff import STABLE_ALPHA3, co_loss, stable_loss
from fat_jax.losses.gradalign import gradalign_regularizer, gradient_through_box_clamp
from fat_jax.methods.records import Adversarial


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

  def init_carry(self):
    """The term's state across steps (a pytree), or None when it keeps none."""
    return None

  def next_carry(self, carry, terms: dict):
    """The state of the next step from this step's `terms` (computed without gradient)."""
    del terms
    return carry


class TermInputs(NamedTuple):
  """What a regulariser may read: the model and weights it differentiates, the BatchNorm
  statistics after the training forwards, the batch, the attack's output and the forwards'
  logits ({'adv', 'clean'}) and adversarial features, the start forward's logits and tapped
  features, a per-step key and the term's state across steps (`carry`, None without one)."""
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
  carry: Any = None


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
class ELLE(Regularizer):
  """ELLE (Abad Rocamora et al., ICLR 2024): λ·mean (ℓ(x_c) − ((1 − α)ℓ(x_a) + αℓ(x_b)))²
  (`losses.elle`), ℓ the per-example CE, from one train-mode forward of [x_a; x_b; x_c] (3N
  examples) after the training forwards, then, as `LIONS-EPFL/ELLE` `Trainer.loss` does for its
  clean-accuracy log, a train-mode forward at x (`clean_forward`: BatchNorm statistics only).
  ELLE-A (`adaptive`): λ is the carried `losses.elle.AdaptiveLambda` weight, 0 at the start,
  `lam` (λ_max) after an error above μ + `sensitivity`·σ of all earlier ones, else × `decay`."""
  lam: float
  adaptive: bool = False
  decay: float = 0.99
  sensitivity: float = 2.0
  clean_forward: bool = True

  def init_carry(self):
    return init_adaptive_lambda() if self.adaptive else None

  def next_carry(self, carry, terms: dict):
    if not self.adaptive:
      return carry
    return adaptive_lambda_update(carry, terms['elle_error'], lam_max=self.lam, decay=self.decay,
                                  sensitivity=self.sensitivity)

  def __call__(self, i: TermInputs, prepared=None):
    del prepared
    n = i.x.shape[0]
    x_a, x_b, x_c, alpha = elle_points(jax.random.fold_in(i.key, 1), i.x, i.eps)
    logits, state, _ = i.model.apply(i.params, i.state, jnp.concatenate([x_a, x_b, x_c]), True)
    losses = cross_entropy(logits, jnp.tile(i.labels, 3))
    error = linearity_error(losses[:n], losses[n:2 * n], losses[2 * n:], alpha)
    lam = i.carry.lam if self.adaptive else self.lam
    terms = {'elle_error': error, 'elle_lambda': jnp.asarray(lam, jnp.float32)}
    if self.clean_forward:
      clean, state, _ = i.model.apply(jax.lax.stop_gradient(i.params), state, i.x, True)
      terms['elle_clean_accuracy'] = accuracy(clean, i.labels).mean()
    return lam * error, terms, state


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
