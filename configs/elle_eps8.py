"""ELLE / ELLE-A (Abad Rocamora et al., ICLR 2024) on CIFAR-10 at ε = 8/255.

Variants by argument (default elle): elle (λ = 1000), a (ELLE-A: λ from 0, λ_max = 4000 after an
error spike above μ + 2σ of all earlier errors, × 0.99 each step without one). As the official
scripts (`LIONS-EPFL/ELLE` scripts/run_elle_cifar10.sh, run_elle-a_cifar10.sh): FGSM from zero
with α = ε, PreActResNet-18 on un-normalised [0, 1] inputs, 30 epochs, cyclic lr 0 → 0.2 → 0,
batch 128, weight decay 5e-4.

  python launch.py --config=configs/elle_eps8.py:a --workdir=runs/elle_a_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected (paper, PreActResNet-18, ε = 8/255): no catastrophic overfitting; robust accuracy close
to GradAlign's at a fraction of its cost.
"""
from fat_jax.config import default_config

VARIANTS = {'elle': 'elle', 'a': 'elle_a'}


def get_config(variant: str = 'elle'):
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; known: {sorted(VARIANTS)}.')
  c = default_config()
  c.eps = 8 / 255
  c.eval.n = 0
  c.method.name = VARIANTS[variant]
  c.model.normalize = False
  return c
