"""The Probability Margin Attack (PMA; Xie et al., "Towards million-scale adversarial robustness
evaluation with stronger individual attacks", arXiv 2411.15210), following the authors' code,
OpenTAI/taiadv at commit ae28cb78a0082b5747be00a2b46190cf2d00d7e8:
``taiadv/vision/white-box/attacks/PMA.py`` (``MDAttack.perturb`` with ``loss_fn='pm'``) and
``attacks/attack_handler.py`` (PMA; PMA+ = PMA with 100 steps, then APGD-T on the targeted DLR
loss). The authors' other release, xieyong0/PMA (``attacks/MD.py``), has the same loop but
asserts loss names its own handler does not pass.

The margin-decomposition loop of MD (`fat_jax.attacks.md`) on the softmax probabilities p: the
probability margin loss p_o − p_y, p_o the largest probability of a class other than y, taken
apart (−p_y, p_o) until the change point K = N/2 and whole after it, with MD's cosine steps of
2ε peak. Examples misclassified at x are not attacked; an example stops at the first iterate
found misclassified and keeps it; each restart (two passes r = 0, 1) starts again only the
examples still robust, which end at their last iterate.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.attacks.core import Attack, ApplyFn
from fat_jax.attacks.md import MarginResult, largest_other, margin_attack
from fat_jax.attacks.convention import attack_convention
from fat_jax.losses.classification import assert_logits_and_labels

PMA_STEPS = 100   # the authors' README command and PMA+ (``num_steps=100``)


def probability_margin_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example probability margin p_o − p_y of the softmax p, p_o = max_{c ≠ y} p_c (> 0 iff
  the example is misclassified)."""
  assert_logits_and_labels(logits, labels)
  p = jax.nn.softmax(logits.astype(jnp.float32))
  return largest_other(p, labels) - jnp.take_along_axis(p, labels[:, None], axis=-1)[:, 0]


def pma_result(apply_fn: ApplyFn, params, state, x, y, key, *, eps, steps: int = PMA_STEPS,
               restarts: int = 1, train: bool = False) -> MarginResult:
  """`pma_attack` with the passes the batch ran: 1 + at most 2·restarts·(steps + 1) forwards
  and 2·restarts·steps backwards, fewer once every example is misclassified."""
  return margin_attack('pma', apply_fn, params, state, x, y, key, eps=eps, steps=steps,
                       change_point=steps / 2, restarts=restarts, train=train)


@attack_convention()
def pma_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, steps: int = PMA_STEPS,
               restarts: int = 1, train: bool = False) -> Attack:
  """PMA in the L∞ ball: `steps` sign steps per pass, change point steps/2, 2·`restarts`
  passes. `train` is the BatchNorm mode (evaluation: False)."""
  result = pma_result(apply_fn, params, state, x, y, key, eps=eps, steps=steps,
                      restarts=restarts, train=train)
  return Attack(result.delta, result.state)
