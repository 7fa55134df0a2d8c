"""ELLE's local-linearity error and ELLE-A's adaptive weight (Abad Rocamora et al., ICLR 2024,
"Efficient local linearity regularization to overcome catastrophic overfitting";
`LIONS-EPFL/ELLE` core/utils/train.py, `Trainer.loss` with reg='ELLE' and `Trainer.train` with
lambda_schedule='onoff')."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fat_jax.losses.broadcast import per_example


def elle_points(key, x, eps: float):
  """(x_a, x_b, x_c, α): x_a, x_b = x + U(−ε, ε) each (no clip to [0, 1]), α ~ U(0, 1) per
  example and x_c = (1 − α)·x_a + α·x_b, drawn as the official `x_ab` (2N × image) and `alpha`."""
  k_ab, k_alpha = jax.random.split(key)
  ab = x[None] + eps * (2 * jax.random.uniform(k_ab, (2,) + x.shape, x.dtype) - 1)
  alpha = jax.random.uniform(k_alpha, (x.shape[0],), x.dtype)
  a = per_example(alpha, x)
  return ab[0], ab[1], (1 - a) * ab[0] + a * ab[1], alpha


def linearity_error(loss_a, loss_b, loss_c, alpha):
  """ELLE's error, the mean over the batch of (ℓ(x_c) − ((1 − α)·ℓ(x_a) + α·ℓ(x_b)))² (torch
  `MSELoss()` of the per-example CE values)."""
  return jnp.mean((loss_c - ((1 - alpha) * loss_a + alpha * loss_b)) ** 2)


class AdaptiveLambda(NamedTuple):
  """ELLE-A's state across steps: the weight λ of the next step and the count, mean and sum of
  squared deviations (Welford) of every error seen so far (the official `elle_values`)."""
  lam: jax.Array
  count: jax.Array
  mean: jax.Array
  m2: jax.Array


def init_adaptive_lambda() -> AdaptiveLambda:
  """λ = 0 and no errors seen (the official loop sets lin_reg = 0 before the first epoch)."""
  zero = lambda: jnp.zeros((), jnp.float32)  # one buffer per field: the step donates each
  return AdaptiveLambda(zero(), jnp.zeros((), jnp.int32), zero(), zero())


def adaptive_lambda_update(s: AdaptiveLambda, error, *, lam_max: float, decay: float,
                           sensitivity: float) -> AdaptiveLambda:
  """ELLE-A's rule after a step with error `error`: λ ← λ_max when more than 2 errors were seen
  before and error > μ + k·σ (μ, σ: mean and population std of all of them, k = `sensitivity`),
  else λ ← decay·λ; then `error` joins the statistics."""
  error = jnp.asarray(error, jnp.float32)
  sigma = jnp.sqrt(s.m2 / jnp.maximum(s.count, 1))
  spike = (s.count > 2) & (error > s.mean + sensitivity * sigma)
  lam = jnp.where(spike, jnp.float32(lam_max), s.lam * decay)
  count = s.count + 1
  d = error - s.mean
  mean = s.mean + d / count
  return AdaptiveLambda(lam, count, mean, s.m2 + d * (error - mean))


# λ of the official CIFAR-10 scripts (`LIONS-EPFL/ELLE` scripts/run_elle_cifar10.sh) by ε·255:
# 1000 up to 8, 5000 from 10 to 20, 10000 from 22 on; ELLE-A's λ_max is 4000 at every ε
# (scripts/run_elle-a_cifar10.sh).
ELLE_A_LAMBDA_MAX = 4000.0


def elle_lambda(eps: float) -> float:
  """ELLE's λ at radius `eps` (pixel units) in the official CIFAR-10 scripts."""
  eps_255 = eps * 255
  return 1000.0 if eps_255 <= 8 + 1e-6 else 5000.0 if eps_255 <= 20 + 1e-6 else 10000.0
