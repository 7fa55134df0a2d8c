"""torchattacks-style one-liners: ``adv = fat_jax.attacks.pgd(f, x, y, eps=8/255, steps=10)``.

Each runs its attack on a plain ``f(x) -> logits`` (x in [0, 1]) and returns the adversarial
images x + δ; further keywords are those of the attack named in its docstring (``key``, default
``jax.random.key(0)``: the same images on every call; ``norm``, ``loss``, ``restarts``, …).
"""
from __future__ import annotations

from typing import Callable

import jax

from fat_jax.attacks.apgd import apgd_attack, apgd_targeted_attack
from fat_jax.attacks.core import init_perturbation
from fat_jax.attacks.cw import cw_l2_attack
from fat_jax.attacks.deepfool import deepfool_attack
from fat_jax.attacks.fab import fab_targeted_attack, fab_untargeted_attack
from fat_jax.attacks.fgsm import fgsm_attack
from fat_jax.attacks.mifgsm import mifgsm_attack
from fat_jax.attacks.md import md_attack, mdmt_attack
from fat_jax.attacks.mm import mm_attack
from fat_jax.attacks.pgd import pgd_attack
from fat_jax.attacks.pma import pma_attack
from fat_jax.attacks.square import square_attack
from fat_jax.attacks.trades import kl_attack

Logits = Callable[[jax.Array], jax.Array]


def fgsm(f: Logits, x, y, *, eps, alpha=None, init: str = 'zero', init_scale: float = 1.0,
         key=None, return_start: bool = False, **options):
  """`fgsm_attack`: x + box(Π_ε(η + α·sign ∇ℓ(x + η))), α = ε by default, η drawn as
  `init_perturbation(key, x, eps, init, init_scale)` (FGSM-RS: init='uniform', α = 1.25ε;
  N-FGSM: init='uniform', init_scale=2, project=False). With `return_start`, the pair
  (adversarial images, start point x + η)."""
  key = jax.random.key(0) if key is None else key
  alpha = eps if alpha is None else alpha
  delta = fgsm_attack(f, x, y, eps=eps, alpha=alpha, init=init, init_scale=init_scale, key=key,
                      **options).delta
  if not return_start:
    return x + delta
  return x + delta, x + init_perturbation(key, x, eps, init, init_scale)


def pgd(f: Logits, x, y, *, eps, alpha=None, steps: int = 10, **options) -> jax.Array:
  """`pgd_attack`: PGD-`steps` from a uniform start, step α = ε/4 by default."""
  alpha = eps / 4 if alpha is None else alpha
  return x + pgd_attack(f, x, y, eps=eps, alpha=alpha, steps=steps, **options).delta


def mifgsm(f: Logits, x, y, *, eps, steps: int = 10, **options) -> jax.Array:
  """`mifgsm_attack`: MI-FGSM, μ = 1, α = ε/steps by default."""
  return x + mifgsm_attack(f, x, y, eps=eps, steps=steps, **options).delta


def apgd(f: Logits, x, y, *, eps, steps: int = 100, **options) -> jax.Array:
  """`apgd_attack`: APGD on the cross-entropy (loss='dlr': APGD-DLR)."""
  return x + apgd_attack(f, x, y, eps=eps, steps=steps, **options).delta


def apgd_t(f: Logits, x, y, *, eps, steps: int = 100, **options) -> jax.Array:
  """`apgd_targeted_attack`: APGD-T on the targeted DLR loss, 9 target classes."""
  return x + apgd_targeted_attack(f, x, y, eps=eps, steps=steps, **options).delta


def fab(f: Logits, x, y, *, eps, steps: int = 100, **options) -> jax.Array:
  """`fab_untargeted_attack`: untargeted FAB (x where no point within ε was found)."""
  return x + fab_untargeted_attack(f, x, y, eps=eps, steps=steps, **options).delta


def fab_t(f: Logits, x, y, *, eps, steps: int = 100, **options) -> jax.Array:
  """`fab_targeted_attack`: FAB-T, 9 target classes."""
  return x + fab_targeted_attack(f, x, y, eps=eps, steps=steps, **options).delta


def square(f: Logits, x, y, *, eps, queries: int = 5000, **options) -> jax.Array:
  """`square_attack`: Square, at most `queries` queries per point."""
  return x + square_attack(f, x, y, eps=eps, queries=queries, **options).delta


def mm(f: Logits, x, y, *, eps, steps: int = 20, n_target_classes: int = 3,
       **options) -> jax.Array:
  """`mm_attack`: Minimum-Margin, MM-3 with 20 iterations by default."""
  return x + mm_attack(f, x, y, eps=eps, steps=steps, n_target_classes=n_target_classes,
                       **options).delta


def tpgd(f: Logits, x, y=None, *, eps, alpha=None, steps: int = 10, **options) -> jax.Array:
  """`kl_attack`: TRADES' KL attack (torchattacks' TPGD), α = ε/4 by default; y is ignored."""
  alpha = eps / 4 if alpha is None else alpha
  return x + kl_attack(f, x, y, eps=eps, alpha=alpha, steps=steps, **options).delta


def deepfool(f: Logits, x, y, **options) -> jax.Array:
  """`deepfool_attack`: minimum-norm DeepFool (norm='linf' or 'l2'), not bounded by any ε."""
  return x + deepfool_attack(f, x, y, **options).delta


def cw_l2(f: Logits, x, y, **options) -> jax.Array:
  """`cw_l2_attack`: minimum-norm C&W-L2 (x where no adversarial point was found)."""
  return x + cw_l2_attack(f, x, y, **options).delta


def md(f: Logits, x, y, *, eps, **options) -> jax.Array:
  """`md_attack`: the Margin-Decomposition attack (Ma et al.), 50 steps, change point 20."""
  return x + md_attack(f, x, y, eps=eps, **options).delta


def mdmt(f: Logits, x, y, *, eps, **options) -> jax.Array:
  """`mdmt_attack`: MD against each of the top target classes in turn."""
  return x + mdmt_attack(f, x, y, eps=eps, **options).delta


def pma(f: Logits, x, y, *, eps, **options) -> jax.Array:
  """`pma_attack`: the Probability Margin Attack, 100 steps."""
  return x + pma_attack(f, x, y, eps=eps, **options).delta
