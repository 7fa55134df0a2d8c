"""AAER (Abnormal Adversarial Example Regularisation, NeurIPS 2023) with WideResNet-34-10 on
CIFAR-100 at ε = 8/255: the official `AAER.py --model WideResNet` (tmllab/2023_NeurIPS_AAER,
CIFAR100/AAER.py, which builds `WideResNet(34, 100, 10, dropRate=0.0)`).

Variants by argument (default n) and every other value as configs/aaer_cifar100_eps8.py: rs
(U(−ε, ε), α = 1.25ε, clamp 1), n (U(−2ε, 2ε), α = ε, clamp 0); the README's CIFAR-100 λ1, λ2,
λ3 for ε = 8/255 (fat_jax.recipes.AAER_LAMBDAS), 30 epochs, cyclic lr 0.2, SGD momentum 0.9,
weight decay 5e-4, batch 128, input normalised with the CIFAR-100 statistics (CIFAR100/utils.py).

  python launch.py --config=configs/aaer_cifar100_wrn_eps8.py:n \\
      --workdir=runs/n_aaer_cifar100_wrn_eps8 --config.data.dir=PATH_WITH_cifar-100-python

Expected: the official README gives no WideResNet command or number (its commands and λ are
those of PreActResNet-18, used here unchanged); no fat_jax measurement yet.
"""
from fat_jax.recipes import aaer_config, set_network


def get_config(variant: str = 'n'):
  c = aaer_config(8, variant, 'cifar100')
  set_network(c, 'wrn34_10')
  return c
