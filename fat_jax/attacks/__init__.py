"""Pure L∞ and L2 attacks in pixel space: the FGSM family, PGD, APGD/APGD-T, FAB (targeted and
untargeted), Square, EOT, and the training attacks of TRADES (KL), ZeroGrad and ATAS."""
from fat_jax.attacks.apgd import apgd_attack, apgd_checkpoints, apgd_targeted_attack
from fat_jax.attacks.atas import atas_step_sizes
from fat_jax.attacks.core import (NORMS, Attack, InputGradient, clip_to_box, init_perturbation,
                                  input_gradient, l2_step, project_l2, project_linf, sign_step)
from fat_jax.attacks.eot import (LossGrad, eot_loss_and_grad, freeze_noise, loss_and_grad,
                                 with_input_noise)
from fat_jax.attacks.fab import fab_attack, fab_targeted_attack, fab_untargeted_attack
from fat_jax.attacks.fgsm import fgsm_attack
from fat_jax.attacks.pgd import pgd_attack
from fat_jax.attacks.square import SquareResult, square_attack
from fat_jax.attacks.trades import kl_attack
from fat_jax.attacks.zerograd import zero_small_gradients

__all__ = ['NORMS', 'Attack', 'InputGradient', 'LossGrad', 'SquareResult', 'apgd_attack',
           'apgd_checkpoints', 'apgd_targeted_attack', 'atas_step_sizes', 'clip_to_box',
           'eot_loss_and_grad', 'fab_attack', 'fab_targeted_attack', 'fab_untargeted_attack',
           'fgsm_attack', 'freeze_noise', 'init_perturbation', 'input_gradient', 'kl_attack',
           'l2_step', 'loss_and_grad', 'pgd_attack', 'project_l2', 'project_linf', 'sign_step',
           'square_attack', 'with_input_noise', 'zero_small_gradients']
