"""The training objectives, exactly one per method: ``objective(logits, labels, start_logits)
-> (loss, terms)`` on the training forwards it names (`forward_order`): `CrossEntropy`,
`MEPObjective`, `TRADES`, `MART`, `MMA`. `CrossEntropy` also takes ``example_weights=`` (the
step passes the training attack's weights when it returns some). Each is a frozen, hashable
dataclass (a static jit argument)."""
from __future__ import annotations

import dataclasses

import jax

from fat_jax.losses import cross_entropy, smoothed_labels
from fat_jax.losses.dart import keras_cross_entropy, keras_weighted_mean
from fat_jax.losses.mart import mart_loss
from fat_jax.losses.mep import MEP_LAMBDA, MEP_TRUE_PROB, mep_loss
from fat_jax.losses.mma import mma_loss
from fat_jax.losses.trades import trades_loss


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
  label_smoothing: float = MEP_TRUE_PROB
  lam: float = MEP_LAMBDA
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
