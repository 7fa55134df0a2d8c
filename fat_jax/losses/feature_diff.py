"""Feature-activation differences (Zhao, Zhang, Kong, Yin, "Catastrophic Overfitting: A
Potential Blessing in Disguise", ECCV 2024; SPEC §2.4). No official code exists: these are the
paper's equations as SPEC states them.

M_i(x) is the activation of node i (NHWC, the `features` of a model's forward),
M_{i,k} its channel k. For a batch of N examples:

* V_act^i = (1/N) Σ_x ‖M_i(x) − M_i(x + δ)‖₂  (norm over H·W·C)    `feature_distance`
* T_act^{i,k} = tanh(a · Σ_x ‖M_{i,k}(x) − M_{i,k}(x + δ)‖² / (N·H·W)), a = 100
                                                                     `channel_saliency`
* L_stable = α3/(N·H·W) · Σ_k ‖M_{B,k}(x + δ) − M_{B,k}(x + δ0)‖²  (Eq. 8)   `stable_loss`
* L_co = CE(f(x + δ; C_p masked), y) − L_stable(C_p)                 (Eq. 9)   `co_loss`
  (by default with a bounded L_stable(C_p), see `co_loss`)

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
  """Σ over examples and positions of (a − b)² per channel (C,) (for NHWC or NC inputs).

  Divided by N·H·W (`positions`) it is the argument of T_act's tanh and, summed
  over the channels, L_stable / α3.
  """
  diff = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.sum(diff * diff, axis=tuple(range(diff.ndim - 1)))


def positions(a: jax.Array) -> int:
  """N·H·W of an NHWC feature map (N of an NC one): the count T_act and L_stable divide by."""
  return a.size // a.shape[-1]


def channel_saliency(squared_difference_sum: jax.Array, count, *,
                     scale: float = TACT_SCALE) -> jax.Array:
  """T_act = tanh(a · Σ ‖M_k(x) − M_k(x + δ)‖² / (N·H·W)) per channel, from the sums
  (`channel_squared_difference`, accumulated over a data set) and `count` = N·H·W."""
  return jnp.tanh(scale * squared_difference_sum / count)


def stable_loss(adv: jax.Array, start: jax.Array, *, alpha3: float = STABLE_ALPHA3,
                channels: jax.Array | None = None) -> jax.Array:
  """L_stable (Eq. 8) = α3/(N·H·W) · Σ_k ‖M_k(x + δ) − M_k(x + δ0)‖².

  `adv`, `start`: the node's activations (N, H, W, C) at the adversarial point
  and at the attack's start point (random start δ0). `channels` (C,) weights
  the channels (a 0/1 mask restricts the sum to a subset C_p, as in L_co);
  None sums over all. The gradient reaches both feature maps, hence only the
  layers up to the node.
  """
  per_channel = channel_squared_difference(adv, start)
  if channels is not None:
    per_channel = per_channel * channels
  return alpha3 * jnp.sum(per_channel) / positions(adv)


def co_loss(masked_logits: jax.Array, labels: jax.Array, adv: jax.Array, start: jax.Array,
            channels: jax.Array, *, alpha3: float = STABLE_ALPHA3,
            saturation: float | None = TACT_SCALE) -> jax.Array:
  """L_co (Eq. 9) = CE(f(x + δ; C_p masked), y) − α3 · Σ_{k∈C_p} D_k.

  D_k = ‖M_k(x + δ) − M_k(x + δ0)‖² / (N·H·W), so with `saturation=None` the
  second term is L_stable(C_p) exactly as Eq. 9 writes it. That term is
  unbounded below: nothing in CE opposes it (C_p is masked there), and the
  scale of a BatchNorm before the node grows it without limit, so training
  with it diverges. With `saturation` = a (default: T_act's a = 100) each D_k
  is replaced by tanh(a·D_k)/a = T_act^k/a: equal to D_k for small differences,
  bounded by 1/a, saturating where the channel's T_act reaches 1 (the paper's
  signature of a CO channel). A labelled deviation from Eq. 9.

  `masked_logits`: the logits of the forward at x + δ with the channels C_p of
  the node zeroed (``model.apply(..., masks={node: 1 − channels})``); `adv`,
  `start`: the node's unmasked activations at x + δ and x + δ0; `channels`: the
  0/1 indicator of C_p. Minimising it fits the labels without C_p while pushing
  the activation differences of C_p up, the pathway the paper links to CO.
  """
  difference = channel_squared_difference(adv, start) / positions(adv)
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
