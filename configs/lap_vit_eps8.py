"""LAP (Layer-Aware Adversarial Weight Perturbation, ICML 2024) with ViT-small on CIFAR-10 at
ε = 8/255: the official `LAP.py --model Vit` (tmllab/2024_ICML_LAP).

Variants by argument (default n) and every other value as configs/lap_eps8.py: the README's β
for ε = 8/255, γ = 0.3, 30 epochs, cyclic lr 0.2, SGD momentum 0.9, weight decay 5e-4, batch
128; the network is the official vit_small (patch 4, D = 384, depth 12, 6 heads), whose 50
perturbed kernels are the official --layer-number 50.

  python launch.py --config=configs/lap_vit_eps8.py:n --workdir=runs/n_lap_vit_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: the official README gives no ViT command or number (its commands and β are those of
PreActResNet-18, used here unchanged); no fat_jax measurement yet (docs/deviations.md).
Evaluated as the official CIFAR-10 script: PGD-50 with 1 restart.
"""
from fat_jax.recipes import lap_config


def get_config(variant: str = 'n'):
  c = lap_config(8, variant)
  c.model.name = 'vit_small'
  return c
