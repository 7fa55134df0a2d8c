"""The regularisers added to the objective: ``term(inputs: TermInputs, prepared) -> (value,
terms, state)``: `AAER`, `GradAlign`, `LStable`, `LCo`. A term declares the start-point
features it differentiates through (`taps`), whether it needs the training attack's start
forward (`needs_start`) and the channel masks of an adversarial forward (`masks`). Each is a
frozen, hashable dataclass (a static jit argument)."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks import input_gradient
from fat_jax.losses import cross_entropy
from fat_jax.losses.aaer import aaer_regularizer
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
