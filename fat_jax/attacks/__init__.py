"""Pure L∞ attacks: ``attack(apply_fn, params, state, x, y, key, *, eps, ...) -> Attack``."""
from fat_jax.attacks.core import (Attack, InputGradient, clip_to_box, init_perturbation,
                                  input_gradient, project_linf, sign_step)
from fat_jax.attacks.fgsm import fgsm_attack
from fat_jax.attacks.pgd import pgd_attack

__all__ = ['Attack', 'InputGradient', 'clip_to_box', 'fgsm_attack', 'init_perturbation',
           'input_gradient', 'pgd_attack', 'project_linf', 'sign_step']
