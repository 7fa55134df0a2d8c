"""LAP (Layer-Aware Adversarial Weight Perturbation, ICML 2024) on CIFAR-10 at ε = 12/255.

Variants by argument (default n): v (zero init, α = ε, clamp), r (U(−ε, ε), α = 1.25ε, clamp),
n (U(−2ε, 2ε), α = ε, no clamp); β from the official README (fat_jax.recipes.LAP_BETAS), γ = 0.3,
PreActResNet-18, 30 epochs, cyclic lr 0.2.

  python launch.py --config=configs/lap_eps12.py:r --workdir=runs/r_lap_eps12 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected (paper): R-LAP AutoAttack ≈ 26.04% where R-FGSM (FGSM-RS) collapses.
Evaluated as the official CIFAR-10 script: PGD-50 with 1 restart (eval.pgd_restarts = 1);
PGD-50-10: --config.eval.pgd_restarts=10.
"""
from fat_jax.recipes import lap_config


def get_config(variant: str = 'n'):
  return lap_config(12, variant)
