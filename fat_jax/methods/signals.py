"""Signals of catastrophic overfitting (CO), one interface for all:

    signal(apply_fn, params, state, x, y, key, eps) -> scalar

on a batch x ∈ [0, 1] (an `apply_fn` of `fat_jax.models.Model.apply`'s signature; the
BatchNorm statistics its forwards compute are discarded). Each is a frozen, hashable
dataclass with its `name` and the `direction` (+1: it rises at CO, −1: it falls) the guard's
detector reads (`methods.guard`). Each reuses the function of the method or paper it comes
from:

* `elle_error`: ELLE's local-linearity error (Abad Rocamora et al., ICLR 2024; `losses.elle`);
* `aae_fraction`: AAER's m/n, the examples whose loss the FGSM step from η lowered (Lin et al.,
  NeurIPS 2023; `losses.aaer`);
* `vact`: V_act at one node between x and FGSM's x + δ (Zhao et al., ECCV 2024;
  `losses.feature_diff`);
* `gradalign_cos`: GradAlign's mean cos(∇ℓ(x), ∇ℓ(x + η)), η ~ U(±ε) (Andriushchenko &
  Flammarion, NeurIPS 2020; `losses.gradalign`);
* `fgsm_pgd_gap`: FGSM accuracy − PGD accuracy (Wong et al., ICLR 2020, stop training when a
  training mini-batch's PGD accuracy drops);
* `fosc`: the mean FOSC at FGSM's point (Wang et al., ICML 2019; `attacks.fosc`).

FGSM here is the zero start with α = ε (the monitor's, `evaluate.monitor`); the AAE fraction's
step is RS-FGSM's (Wong et al.): η = `init_scale`·U(±ε), α = 1.25ε, Π_ε.
`measure(signals)` computes several on one batch in one jitted call.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from fat_jax.attacks import fgsm_attack, fosc_at, init_perturbation, pgd_attack, sign_step
from fat_jax.losses import accuracy, cross_entropy
from fat_jax.losses.aaer import aaer_regularizer
from fat_jax.losses.elle import elle_points, linearity_error
from fat_jax.losses.feature_diff import feature_distance
from fat_jax.losses.gradalign import gradalign_regularizer
from fat_jax.losses.input_gradient import input_gradient


def _fgsm(apply_fn, params, state, x, y, key, eps, train):
  """FGSM from zero with α = ε (its δ)."""
  return fgsm_attack(apply_fn, params, state, x, y, key, eps=eps, alpha=eps, train=train).delta


@dataclasses.dataclass(frozen=True)
class ELLEError:
  """mean (ℓ(x_c) − ((1 − α)ℓ(x_a) + αℓ(x_b)))² of ELLE's draws (`losses.elle.elle_points`),
  ℓ the per-example CE, from one forward of [x_a; x_b; x_c]."""
  train: bool = True
  name = 'elle_error'
  direction = 1

  def __call__(self, apply_fn, params, state, x, y, key, eps):
    n = x.shape[0]
    x_a, x_b, x_c, alpha = elle_points(key, x, eps)
    logits = apply_fn(params, state, jnp.concatenate([x_a, x_b, x_c]), self.train)[0]
    losses = cross_entropy(logits, jnp.tile(y, 3))
    return linearity_error(losses[:n], losses[n:2 * n], losses[2 * n:], alpha)


@dataclasses.dataclass(frozen=True)
class AAEFraction:
  """AAER's AAE fraction m/n, A_i = [ℓ_i(x + η) > ℓ_i(x + δ)], for δ = box(Π_ε(η + α·sign
  ∇ℓ(x + η))), η = `init_scale`·U(±ε) (`losses.aaer.aaer_regularizer`'s statistics)."""
  train: bool = True
  init_scale: float = 1.0
  alpha: float = 1.25           # × ε
  name = 'aae_fraction'
  direction = 1

  def __call__(self, apply_fn, params, state, x, y, key, eps):
    eta = init_perturbation(key, x, eps, 'uniform', self.init_scale)
    start = input_gradient(apply_fn, params, state, x, y, eta, train=self.train)
    delta = sign_step(x, eta, start.grad, eps=eps, alpha=self.alpha * eps)
    logits = apply_fn(params, state, x + delta, self.train)[0]
    _, stats = aaer_regularizer(start.logits, logits, y, lambda1=1.0, lambda2=1.0, lambda3=1.0)
    return stats.aae_fraction


@dataclasses.dataclass(frozen=True)
class VAct:
  """V_act at `node`: the mean over the batch of ‖M(x) − M(x + δ)‖₂, δ the FGSM point."""
  node: str = 'B'
  train: bool = True
  name = 'vact'
  direction = 1

  def __call__(self, apply_fn, params, state, x, y, key, eps):
    delta = _fgsm(apply_fn, params, state, x, y, key, eps, self.train)
    _, _, clean = apply_fn(params, state, x, self.train)
    _, _, adv = apply_fn(params, state, x + delta, self.train)
    return feature_distance(clean[self.node], adv[self.node]).mean()


@dataclasses.dataclass(frozen=True)
class GradAlignCosine:
  """GradAlign's mean cos(∇_x ℓ(x), ∇_x ℓ(x + η)), η ~ U(±ε), over the examples whose two
  gradients are non-zero (`losses.gradalign.gradalign_regularizer` at λ = 1)."""
  train: bool = True
  name = 'gradalign_cos'
  direction = -1

  def __call__(self, apply_fn, params, state, x, y, key, eps):
    clean = input_gradient(apply_fn, params, state, x, y, jnp.zeros_like(x), train=self.train)
    _, (_, cos) = gradalign_regularizer(apply_fn, params, state, x, y, key, eps=eps,
                                        grad_clean=clean.grad, lam=1.0, train=self.train)
    return cos


@dataclasses.dataclass(frozen=True)
class FGSMPGDGap:
  """Accuracy at the FGSM point − accuracy at the PGD-`steps` point (step `step_size`·ε, start
  `init`, one restart), each point counted robust only when also correct clean."""
  steps: int = 10
  step_size: float = 0.25       # × ε
  init: str = 'uniform'
  train: bool = True
  name = 'fgsm_pgd_gap'
  direction = 1

  def __call__(self, apply_fn, params, state, x, y, key, eps):
    fgsm_key, pgd_key = jax.random.split(key)
    fgsm = _fgsm(apply_fn, params, state, x, y, fgsm_key, eps, self.train)
    pgd = pgd_attack(apply_fn, params, state, x, y, pgd_key, eps=eps,
                     alpha=self.step_size * eps, steps=self.steps, train=self.train,
                     init=self.init).delta
    correct = lambda d: accuracy(apply_fn(params, state, x + d, self.train)[0], y)
    clean = correct(jnp.zeros_like(x))
    return jnp.mean(clean * correct(fgsm)) - jnp.mean(clean * correct(pgd))


@dataclasses.dataclass(frozen=True)
class FOSC:
  """The mean FOSC c(x + δ) = ε‖g‖₁ − ⟨δ, g⟩ at the FGSM point, g = ∇ of each example's CE."""
  train: bool = True
  name = 'fosc'
  direction = 1

  def __call__(self, apply_fn, params, state, x, y, key, eps):
    delta = _fgsm(apply_fn, params, state, x, y, key, eps, self.train)
    return fosc_at(apply_fn, params, state, x, y, delta, eps=eps, train=self.train).mean()


SIGNALS = {s.name: s for s in (ELLEError, AAEFraction, VAct, GradAlignCosine, FGSMPGDGap, FOSC)}


@functools.partial(jax.jit, static_argnums=(0, 1, 7))
def measure(signals: tuple, apply_fn, params, state, x, y, key, eps: float) -> dict:
  """{name: value} of each signal on the batch (x, y), each with its own key
  (``fold_in(key, i)`` for the i-th)."""
  return {s.name: s(apply_fn, params, state, x, y, jax.random.fold_in(key, i), eps)
          for i, s in enumerate(signals)}
