"""The FGSM family as one pure function (docs/protocol.md §2).

| method  | init                  | α     | project |
|---------|-----------------------|-------|---------|
| FGSM    | zero                  | ε     | yes     |
| FGSM-RS | uniform, scale 1      | 1.25ε | yes     |
| N-FGSM  | uniform, scale 2      | ε     | no      |
"""
from __future__ import annotations

import jax

from fat_jax.attacks.core import (Attack, ApplyFn, check_eps, init_perturbation,
                                  input_gradient, sign_step)


def fgsm_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, alpha,
                init: str = 'zero', init_scale: float = 1.0, project: bool = True,
                train: bool = True, loss: str = 'ce') -> Attack:
  """One signed-gradient step from an initial point η.

  δ = box(Π_ε(η + α·sign ∇_η ℓ(f(x + η), y))), Π_ε only if `project`.
  `train` is the BatchNorm mode of the attack forward (the FGSM-family papers
  use train mode, which also updates the running statistics: returned in
  `Attack.state`). The returned δ carries no gradient.
  """
  check_eps(eps)
  eta = init_perturbation(key, x, eps, init, init_scale)
  g = input_gradient(apply_fn, params, state, x, y, eta, train=train, loss=loss)
  delta = sign_step(x, eta, g.grad, eps=eps, alpha=alpha, project=project)
  return Attack(jax.lax.stop_gradient(delta), g.state)
