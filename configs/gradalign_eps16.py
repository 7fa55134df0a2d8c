"""GradAlign (Andriushchenko & Flammarion, NeurIPS 2020) on CIFAR-10 at ε = 16/255.

FGSM from zero with α = 1.25ε plus λ·(1 − cos(∇ℓ(x), ∇ℓ(x + η))), λ = 0.02·10^(ε·255/8),
PreActResNet-18, 30 epochs, cyclic lr 0 → 0.3 → 0.

  python launch.py --config=configs/gradalign_eps16.py --workdir=runs/gradalign_eps16 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected (paper): AutoAttack ≈ 19.07%; no catastrophic overfitting.
"""
from fat_jax.recipes import gradalign_config


def get_config():
  return gradalign_config(16)
