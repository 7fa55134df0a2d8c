"""Pure L∞ and L2 attacks in pixel space: the FGSM family, PGD, MI-FGSM, APGD/APGD-T, FAB
(targeted and untargeted), Minimum-Margin (MM), Margin-Decomposition (MD, MDMT), Probability
Margin (PMA), Square, EOT, BPDA, the minimum-norm DeepFool
(L2, L∞) and C&W-L2, FOSC, and the training attacks of TRADES (KL), ZeroGrad, ATAS and
Dynamic AT (DART).

One calling convention (`fat_jax.attacks.convention`): every attack takes a plain
``f(x) -> logits`` as ``attack(f, x, y, *, eps, key=..., ...)``, or the apply form
``attack(apply_fn, params, state, x, y, key, *, eps, ...)``, and refuses an ε outside its threat
model (8 for 8/255) and points outside [0, 1] with one line. The torchattacks-style one-liners
``fgsm``, ``pgd``, ``mifgsm``, ``apgd``, ``apgd_t``, ``fab``, ``fab_t``, ``square``, ``mm``,
``md``, ``mdmt``, ``pma``, ``tpgd``, ``deepfool`` and ``cw_l2`` (`fat_jax.attacks.oneliners`) return the adversarial images;
as attributes of this package they stand for those functions, not for the modules of the same
names (import from those modules by their full path: ``from fat_jax.attacks.pgd import ...``).

BatchNorm mode. ``train`` is the BatchNorm mode of an attack's forwards in the apply form
(docs/protocol.md §1.5); a plain ``f`` has one mode, its own, and ignores it. Every attack
defaults to ``train=False``: the running statistics, as evaluation attacks run, and as the
official TRADES and DART code attack (in ``model.eval()``). With ``train=True`` the forwards use
batch statistics and the attack returns the updated running statistics in its ``state``. The
training attacks pass the mode of their official code themselves
(`fat_jax.methods.training_attacks`: ``model.train()`` for PGD-AT and the FGSM family).
"""
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
from fat_jax.attacks.md import md_attack, mdmt_attack
from fat_jax.attacks.mifgsm import mifgsm_attack
from fat_jax.attacks.mm import mm_attack, mm_loss
from fat_jax.attacks.oneliners import (apgd, apgd_t, cw_l2, deepfool, fab, fab_t, fgsm, md,
                                      mdmt, mifgsm, mm, pgd, pma, square, tpgd)
from fat_jax.attacks.pgd import pgd_attack
from fat_jax.attacks.pma import pma_attack, probability_margin_loss
from fat_jax.attacks.square import (SquareCarry, SquareResult, square_attack, square_queries,
                                    square_result, square_start)
from fat_jax.attacks.trades import kl_attack
from fat_jax.attacks.zerograd import zero_small_gradients

__all__ = ['ATTACK_STARTS', 'THREAT_MODELS', 'Attack', 'CWResult', 'DARTAttack', 'DeepFoolResult',
           'apgd', 'apgd_t', 'cw_l2', 'deepfool', 'fab', 'fab_t', 'fgsm', 'md', 'mdmt', 'mifgsm',
           'mm', 'pgd', 'pma', 'square', 'tpgd',
           'InputGradient', 'LossGrad', 'Preprocessed', 'SquareCarry', 'SquareResult',
           'apgd_attack', 'apgd_checkpoints', 'apgd_targeted_attack', 'atas_step_sizes', 'bpda',
           'clip_to_box', 'cw_l2_attack', 'dart_attack', 'dart_threshold', 'deepfool_attack',
           'eot_loss_and_grad', 'fab_attack', 'fab_targeted_attack', 'fab_untargeted_attack',
           'fgsm_attack', 'fosc', 'fosc_at', 'freeze_noise', 'init_perturbation', 'input_gradient',
           'kl_attack', 'l2_step', 'loss_and_grad', 'md_attack', 'mdmt_attack', 'mifgsm_attack',
           'mm_attack', 'mm_loss', 'pma_attack', 'probability_margin_loss',
           'per_example', 'pgd_attack',
           'project_l2', 'project_linf', 'sign_step', 'square_attack', 'square_queries',
           'square_result', 'square_start', 'with_input_noise', 'with_preprocessing',
           'zero_small_gradients']
