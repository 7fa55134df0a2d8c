"""GradAlign (Andriushchenko & Flammarion, NeurIPS 2020) on CIFAR-10 at ε = 12/255.

FGSM from zero with α = 1.25ε plus λ·(1 − cos(∇ℓ(x), ∇ℓ(x + η))), λ = 0.02·10^(ε·255/8),
GradAlign's own recipe (`tml-epfl/understanding-fast-adv-training` train.py, utils.py,
models.py): its PreActResNet-18 (un-normalised [0, 1] inputs, He-normal init, zero linear
bias, no BN-ReLU before pooling), 30 epochs, lr 0 → 0.3 at epoch 12 (2/5) → 0 interpolated per
iteration, SGD momentum fixed at 0.9.

  python launch.py --config=configs/gradalign_eps12.py --workdir=runs/gradalign_eps12 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected (with this network and schedule): no catastrophic overfitting (λ = 0.632).
"""
from fat_jax.recipes import gradalign_config


def get_config():
  return gradalign_config(12)
