"""ZeroGrad (Golgooni et al. 2021, `rohban-lab/catastrophic_overfitting` ``quantile_fgsm``):
before the FGSM step, zero the input-gradient coordinates whose magnitude is below the
q-quantile of that example's |∇| (q = 0.35 on CIFAR-10), so that their δ stays at the
random start."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fat_jax.attacks.core import per_example


def zero_small_gradients(grad: jax.Array, q: float) -> jax.Array:
  """g with g_j ← 0 where |g_j| < quantile_q(|g|) over the example's coordinates.

  The quantile interpolates linearly (as ``torch.quantile``); coordinates equal
  to it are kept, as the official strict ``<``.
  """
  magnitude = jnp.abs(grad)
  threshold = jnp.quantile(magnitude.reshape(grad.shape[0], -1), q, axis=1)
  return jnp.where(magnitude < per_example(threshold, grad), 0.0, grad)
