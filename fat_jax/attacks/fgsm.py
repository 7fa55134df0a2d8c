"""The FGSM family as one pure function (docs/protocol.md §2).

| method  | init                  | α     | project |
|---------|-----------------------|-------|---------|
| FGSM    | zero                  | ε     | yes     |
| FGSM-RS | uniform, scale 1      | 1.25ε | yes     |
| N-FGSM  | uniform, scale 2      | ε     | no      |
"""
from __future__ import annotations

import jax

from fat_jax.attacks.convention import attack_convention
from fat_jax.attacks.core import (Attack, ApplyFn, init_perturbation,
                                  input_gradient, sign_step)


@attack_convention()
def fgsm_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, alpha,
                init: str = 'zero', init_scale: float = 1.0, project: bool = True,
                train: bool = False, loss: str = 'ce') -> Attack:
  """One signed-gradient step from an initial point η = `init_perturbation(key, x, eps, init,
  init_scale)`.

  δ = box(Π_ε(η + α·sign ∇_η ℓ(f(x + η), y))), Π_ε only if `project`. The returned δ
  carries no gradient; `train`: the BatchNorm mode (`fat_jax.attacks`).
  """
  eta = init_perturbation(key, x, eps, init, init_scale)
  g = input_gradient(apply_fn, params, state, x, y, eta, train=train, loss=loss)
  delta = sign_step(x, eta, g.grad, eps=eps, alpha=alpha, project=project)
  return Attack(jax.lax.stop_gradient(delta), g.state)
