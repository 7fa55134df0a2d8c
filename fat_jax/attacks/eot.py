"""Loss gradients for deterministic and randomised models; EOT (docs/protocol.md §4.3).

A *randomised* apply function takes the key of its noise draw:
``random_apply_fn(params, state, x, train, key) -> (logits, new_state, features)``.
Expectation over Transformation (Athalye et al. 2018) attacks it with the
gradient averaged over K draws, (1/K) Σ_k ∇_x ℓ(f(x; r_k)), which is what
`apgd_attack(..., randomized=True, eot_samples=K)` uses at every iteration.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fat_jax.attacks.core import ApplyFn

LogitsLoss = Callable[[jax.Array], jax.Array]  # logits (B, C) -> per-example loss (B,)
NOISE_KINDS = ('uniform', 'gaussian')


class LossGrad(NamedTuple):
  """Per-example losses at x, their input gradient ∇_x Σ_i ℓ_i, the logits and the state."""
  loss: jax.Array
  grad: jax.Array
  logits: jax.Array
  state: object


def loss_and_grad(apply_fn: ApplyFn, params, state, x, loss_fn: LogitsLoss, *,
                  train: bool = False) -> LossGrad:
  """One forward and one backward: ℓ_i = loss_fn(f(x))_i and ∇_x Σ_i ℓ_i.

  The sum makes each row of the gradient the gradient of its own example's loss.
  """
  def objective(xa):
    logits, new_state, _ = apply_fn(params, state, xa, train)
    losses = loss_fn(logits)
    return losses.sum(), (losses, logits, new_state)

  grad, (losses, logits, new_state) = jax.grad(objective, has_aux=True)(x)
  return LossGrad(losses, grad, logits, new_state)


def freeze_noise(random_apply_fn: Callable, key) -> ApplyFn:
  """The deterministic apply function of one noise draw (`key`) of a randomised model."""
  return lambda params, state, x, train: random_apply_fn(params, state, x, train, key)


def eot_loss_and_grad(random_apply_fn: Callable, params, state, x, loss_fn: LogitsLoss, key, *,
                      samples: int, train: bool = False) -> LossGrad:
  """EOT: loss and gradient averaged over `samples` draws r_k, keys ``fold_in(key, k)``.

  grad = (1/K) Σ_k ∇_x Σ_i ℓ_i(f(x; r_k)), loss = (1/K) Σ_k ℓ(f(x; r_k)); the
  logits are those of the last draw (AutoAttack's ``eot_iter`` keeps the last
  draw's logits and loss; the mean loss is a less noisy signal for APGD's
  step-size control). K forwards and K backwards.
  """
  if samples < 1:
    raise ValueError(f'EOT needs at least one sample, got samples={samples}.')

  def draw(k, st):
    return loss_and_grad(freeze_noise(random_apply_fn, jax.random.fold_in(key, k)), params, st,
                         x, loss_fn, train=train)

  def accumulate(k, acc):
    lg = draw(k, acc.state)
    return LossGrad(acc.loss + lg.loss, acc.grad + lg.grad, lg.logits, lg.state)

  total = jax.lax.fori_loop(1, samples, accumulate, draw(0, state))
  return total._replace(loss=total.loss / samples, grad=total.grad / samples)


@dataclasses.dataclass(frozen=True)
class InputNoise:
  """A randomised model f(x + r): r ~ U(−scale, scale) ('uniform') or N(0, scale²) ('gaussian').

  The inference-noise defence of docs/protocol.md §2.4. With `clip`, x + r is clipped to the
  box [0, 1] (a valid image); without, it is not (the paper adds the noise
  to the input as is). Hashable, so it can be a static jit argument.
  """
  apply_fn: ApplyFn
  scale: float
  kind: str = 'uniform'
  clip: bool = False

  def __post_init__(self):
    if self.kind not in NOISE_KINDS:
      raise ValueError(f'Unknown noise kind {self.kind!r}; known: {NOISE_KINDS}.')

  def __call__(self, params, state, x, train, key):
    if self.kind == 'uniform':
      noise = jax.random.uniform(key, x.shape, x.dtype, -self.scale, self.scale)
    else:
      noise = self.scale * jax.random.normal(key, x.shape, x.dtype)
    noisy = jnp.clip(x + noise, 0.0, 1.0) if self.clip else x + noise
    return self.apply_fn(params, state, noisy, train)


def with_input_noise(apply_fn: ApplyFn, scale: float, kind: str = 'uniform',
                     clip: bool = False) -> InputNoise:
  """The randomised apply function ``(params, state, x, train, key)`` of f(x + r) (of
  f(clip(x + r, 0, 1)) with `clip`)."""
  return InputNoise(apply_fn, float(scale), kind, bool(clip))


def randomized_gradient(apply_fn: Callable, params, state, x, loss_fn: LogitsLoss, key, *,
                        randomized: bool, samples: int = 1, train: bool = False) -> LossGrad:
  """`loss_and_grad` for a deterministic model (key unused), `eot_loss_and_grad` otherwise."""
  if randomized:
    return eot_loss_and_grad(apply_fn, params, state, x, loss_fn, key, samples=samples,
                             train=train)
  if samples != 1:
    raise ValueError(f'eot_samples={samples} needs a randomised model (randomized=True).')
  return loss_and_grad(apply_fn, params, state, x, loss_fn, train=train)


def randomized_logits(apply_fn: Callable, params, state, x, key, *, randomized: bool,
                      train: bool = False):
  """One forward ``(logits, new_state)``: a draw with `key` for a randomised model."""
  if randomized:
    logits, new_state, _ = apply_fn(params, state, x, train, key)
  else:
    logits, new_state, _ = apply_fn(params, state, x, train)
  return logits, new_state
