"""Pure L∞ and L2 attacks in pixel space: the FGSM family, PGD, MI-FGSM, APGD/APGD-T, FAB
(targeted and untargeted), Minimum-Margin (MM), Square, EOT, BPDA, the minimum-norm DeepFool
(L2, L∞) and C&W-L2, FOSC, and the training attacks of TRADES (KL), ZeroGrad, ATAS and
Dynamic AT (DART)."""
from fat_jax.attacks.apgd import apgd_attack, apgd_checkpoints, apgd_targeted_attack
from fat_jax.attacks.atas import atas_step_sizes
from fat_jax.attacks.bpda import Preprocessed, bpda, with_preprocessing
from fat_jax.attacks.core import (ATTACK_STARTS, THREAT_MODELS, Attack, InputGradient,
                                  clip_to_box, init_perturbation, input_gradient, l2_step,
                                  per_example, project_l2, project_linf, sign_step)
from fat_jax.attacks.cw import CWResult, cw_l2_attack
from fat_jax.attacks.dart import DARTAttack, dart_attack, dart_threshold
from fat_jax.attacks.deepfool import DeepFoolResult, deepfool_attack
from fat_jax.attacks.eot import (LossGrad, eot_loss_and_grad, freeze_noise, loss_and_grad,
                                 with_input_noise)
from fat_jax.attacks.fab import fab_attack, fab_targeted_attack, fab_untargeted_attack
from fat_jax.attacks.fgsm import fgsm_attack
from fat_jax.attacks.fosc import fosc, fosc_at
from fat_jax.attacks.mifgsm import mifgsm_attack
from fat_jax.attacks.mm import mm_attack, mm_loss
from fat_jax.attacks.pgd import pgd_attack
from fat_jax.attacks.square import (SquareCarry, SquareResult, square_attack, square_queries,
                                    square_result, square_start)
from fat_jax.attacks.trades import kl_attack
from fat_jax.attacks.zerograd import zero_small_gradients

__all__ = ['ATTACK_STARTS', 'THREAT_MODELS', 'Attack', 'CWResult', 'DARTAttack', 'DeepFoolResult',
           'InputGradient', 'LossGrad', 'Preprocessed', 'SquareCarry', 'SquareResult',
           'apgd_attack', 'apgd_checkpoints', 'apgd_targeted_attack', 'atas_step_sizes', 'bpda',
           'clip_to_box', 'cw_l2_attack', 'dart_attack', 'dart_threshold', 'deepfool_attack',
           'eot_loss_and_grad', 'fab_attack', 'fab_targeted_attack', 'fab_untargeted_attack',
           'fgsm_attack', 'fosc', 'fosc_at', 'freeze_noise', 'init_perturbation', 'input_gradient',
           'kl_attack', 'l2_step', 'loss_and_grad', 'mifgsm_attack', 'mm_attack', 'mm_loss',
           'per_example', 'pgd_attack',
           'project_l2', 'project_linf', 'sign_step', 'square_attack', 'square_queries',
           'square_result', 'square_start', 'with_input_noise', 'with_preprocessing',
           'zero_small_gradients']
