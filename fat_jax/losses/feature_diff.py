"""Feature-activation differences (Zhao, Zhang, Kong, Yin, "Catastrophic Overfitting: A
Potential Blessing in Disguise", ECCV 2024). No official code exists: these are the paper's
equations.

M_i(x) ∈ R^{N×H×W} is the activation of node i (here NHWC, the `features` of a model's
forward), M_{i,k} its channel k; in the paper's Eqs. 6 and 8 **N is the number of channels**
(C below), H and W the spatial size. For a batch of B examples:

* V_act^i = (1/B) Σ_x ‖M_i(x) − M_i(x + δ)‖₂  (norm over H·W·C)    `feature_distance`
* T_act^{i,k} = tanh(a · Σ_x ‖M_{i,k}(x) − M_{i,k}(x + δ)‖² / count), a = 100 (Eq. 6)
                                                                     `channel_saliency`
  (Eq. 6 as written: count = C·H·W and Σ over the data set; see `fat_jax.analysis.feature_analysis`)
* L_stable = α3/(C·H·W) · Σ_k ‖M_{B,k}(x + δ) − M_{B,k}(x + δ0)‖² per example, averaged
  over the batch: α3 × the mean over (batch, h, w, channel) of the squared difference
  (Eq. 8)                                                            `stable_loss`
* L_co = CE(f(x + δ; C_p masked), y) − L_stable(C_p)                 (Eq. 9)   `co_loss`,
  a supplement to the method's own training loss (the paper: "the supplemental constraint
  for Eq. (1)"); optionally with a bounded L_stable(C_p), see `co_loss`.

All functions are pure and differentiate through both feature maps they are
given; pass a `jax.lax.stop_gradient` copy to make one side a fixed target.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fat_jax.losses.classification import cross_entropy

TACT_SCALE = 100.0  # a of T_act
STABLE_ALPHA3 = 200.0  # α3 of all the paper's runs


def feature_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """‖a_n − b_n‖₂ per example (N,), over all other axes; the mean over examples is V_act."""
  diff = (a.astype(jnp.float32) - b.astype(jnp.float32)).reshape(len(a), -1)
  return jnp.sqrt(jnp.sum(diff * diff, axis=1))


def channel_squared_difference(a: jax.Array, b: jax.Array) -> jax.Array:
  """Σ over examples and positions of (a − b)² per channel (C,) (for NHWC or NC inputs):
  the sum of T_act's numerator over the examples of `a`, `b`."""
  diff = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.sum(diff * diff, axis=tuple(range(diff.ndim - 1)))


def positions(a: jax.Array) -> int:
  """B·H·W of an NHWC feature map (B of an NC one): examples × spatial positions."""
  return a.size // a.shape[-1]


def channel_saliency(squared_difference_sum: jax.Array, count, *,
                     scale: float = TACT_SCALE) -> jax.Array:
  """T_act = tanh(a · Σ ‖M_k(x) − M_k(x + δ)‖² / count) per channel, from the sums
  (`channel_squared_difference`, accumulated over a data set); `count` is Eq. 6's N·H·W
  (C·H·W, the sum over the data set as written) or another normaliser (see
  `fat_jax.analysis.feature_analysis.tact_count`)."""
  return jnp.tanh(scale * squared_difference_sum / count)


def _channel_differences(adv: jax.Array, start: jax.Array) -> jax.Array:
  """D_k = Σ_{x, h, w} (M_k(x + δ) − M_k(x + δ0))² / (B·C·H·W) per channel (C,): Σ_k D_k
  is the mean over (batch, h, w, channel), i.e. L_stable / α3 (Eq. 8, N = C)."""
  return channel_squared_difference(adv, start) / (positions(adv) * adv.shape[-1])


def stable_loss(adv: jax.Array, start: jax.Array, *, alpha3: float = STABLE_ALPHA3,
                channels: jax.Array | None = None) -> jax.Array:
  """L_stable (Eq. 8) = α3/(C·H·W) · Σ_k ‖M_k(x + δ) − M_k(x + δ0)‖², averaged over the batch.

  = α3 · mean over (batch, h, w, channel) of (M(x + δ) − M(x + δ0))². `adv`,
  `start`: the node's activations (B, H, W, C) at the adversarial point and at
  the attack's start point (random start δ0). `channels` (C,) weights the
  channels: a 0/1 mask restricts the sum to a subset C_p (L_stable(C_p) of
  Eq. 9), keeping Eq. 8's normaliser C·H·W; None sums over all. The gradient
  reaches both feature maps, hence only the layers up to the node.
  """
  difference = _channel_differences(adv, start)
  if channels is not None:
    difference = difference * channels
  return alpha3 * jnp.sum(difference)


def co_loss(masked_logits: jax.Array, labels: jax.Array, adv: jax.Array, start: jax.Array,
            channels: jax.Array, *, alpha3: float = STABLE_ALPHA3,
            saturation: float | None = None) -> jax.Array:
  """L_co (Eq. 9) = CE(f(x + δ; C_p masked), y) − L_stable(C_p), L_stable(C_p) = α3·Σ_{C_p} D_k.

  D_k = Σ_{x,h,w} (M_k(x + δ) − M_k(x + δ0))² / (B·C·H·W) (`stable_loss` on C_p,
  Eq. 8's scale with N = C). L_co is added to the method's own training loss
  (the paper's "supplemental constraint"), not used alone.

  `saturation` None or 0 (default): Eq. 9 as written. Its second term is
  unbounded below (nothing in the masked CE opposes it, and the scale of a
  BatchNorm before the node can grow it). With `saturation` = a each D_k is
  replaced by tanh(a·D_k)/a: equal to D_k for small differences, bounded by
  1/a. A labelled deviation from Eq. 9 (config `method.co.saturation`).

  `masked_logits`: the logits of the forward at x + δ with the channels C_p of
  the node zeroed (``model.apply(..., masks={node: 1 − channels})``); `adv`,
  `start`: the node's unmasked activations at x + δ and x + δ0; `channels`: the
  0/1 indicator of C_p. Minimising it fits the labels without C_p while pushing
  the activation differences of C_p up, the pathway the paper links to CO.
  """
  difference = _channel_differences(adv, start)
  if saturation:
    difference = jnp.tanh(saturation * difference) / saturation
  return cross_entropy(masked_logits, labels).mean() - alpha3 * jnp.sum(difference * channels)


def top_channels(saliency: jax.Array, percent: float) -> jax.Array:
  """0/1 indicator (C,) of the ⌈p·C/100⌉ channels with the largest T_act (at least 1; ties:
  the lower channel index first)."""
  num = saliency.shape[-1]
  if not 0 < percent <= 100:
    raise ValueError(f'percent must be in (0, 100], got {percent}.')
  k = max(1, math.ceil(percent * num / 100 - 1e-9))
  order = jnp.argsort(-jnp.asarray(saliency), stable=True)
  return jnp.zeros((num,), jnp.float32).at[order[:k]].set(1.0)
