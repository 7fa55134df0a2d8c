"""Pure L∞ attacks in pixel space: the FGSM family, PGD, APGD/APGD-T, FAB-T, Square, EOT, and the
training attacks of TRADES (KL), ZeroGrad and ATAS."""
from fat_jax.attacks.apgd import apgd_attack, apgd_checkpoints, apgd_targeted_attack
from fat_jax.attacks.atas import atas_step_sizes
from fat_jax.attacks.core import (Attack, InputGradient, clip_to_box, init_perturbation,
                                  input_gradient, project_linf, sign_step)
from fat_jax.attacks.eot import (LossGrad, eot_loss_and_grad, freeze_noise, loss_and_grad,
                                 with_input_noise)
from fat_jax.attacks.fab import fab_attack, fab_targeted_attack
from fat_jax.attacks.fgsm import fgsm_attack
from fat_jax.attacks.pgd import pgd_attack
from fat_jax.attacks.square import SquareResult, square_attack
from fat_jax.attacks.trades import kl_attack
from fat_jax.attacks.zerograd import zero_small_gradients

__all__ = ['Attack', 'InputGradient', 'LossGrad', 'SquareResult', 'apgd_attack',
           'apgd_checkpoints', 'apgd_targeted_attack', 'atas_step_sizes', 'clip_to_box',
           'eot_loss_and_grad', 'fab_attack', 'fab_targeted_attack', 'fgsm_attack', 'freeze_noise',
           'init_perturbation', 'input_gradient', 'kl_attack', 'loss_and_grad', 'pgd_attack',
           'project_linf', 'sign_step', 'square_attack', 'with_input_noise',
           'zero_small_gradients']
