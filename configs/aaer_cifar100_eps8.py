"""AAER (Abnormal Adversarial Example Regularisation, NeurIPS 2023) on CIFAR-100 at ε = 8/255.

Variants by argument (default n): rs (U(−ε, ε), α = 1.25ε, clamp 1), n (U(−2ε, 2ε), α = ε,
clamp 0); λ1, λ2, λ3 from the official README (fat_jax.recipes.AAER_LAMBDAS), PreActResNet-18,
30 epochs, cyclic lr 0.2.

  python launch.py --config=configs/aaer_cifar100_eps8.py:rs --workdir=runs/aaer_cifar100_eps8_rs \\
      --config.data.dir=PATH_WITH_cifar-100-python

Expected: no catastrophic overfitting (AAE fraction stays low); the paper's tables give the
clean / PGD / AA numbers of this recipe.
"""
from fat_jax.recipes import aaer_config


def get_config(variant: str = 'n'):
  return aaer_config(8, variant, 'cifar100')
