"""LAP (Layer-Aware Adversarial Weight Perturbation, ICML 2024) with WideResNet-34-10 on CIFAR-10
at ε = 8/255: the official `LAP.py --model WideResNet` (tmllab/2024_ICML_LAP).

Variants by argument (default n) and every other value as configs/lap_eps8.py: the README's β
for ε = 8/255, γ = 0.3, 30 epochs, cyclic lr 0.2, SGD momentum 0.9, weight decay 5e-4, batch
128, input normalised with the CIFAR-10 statistics; the network is the official
`WideResNet(34, 10, 10, dropRate=0.0)`, whose 35 conv/linear kernels are LAP's layers l = 1..35
(the official `--layer-number 35`).

  python launch.py --config=configs/lap_wrn_eps8.py:n --workdir=runs/n_lap_wrn_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: the official README gives no WideResNet command or number (its commands and β are
those of PreActResNet-18, used here unchanged); no fat_jax measurement yet.
Evaluated as the official CIFAR-10 script: PGD-50 with 1 restart.
"""
from fat_jax.recipes import lap_config, set_network


def get_config(variant: str = 'n'):
  c = lap_config(8, variant)
  set_network(c, 'wrn34_10')
  return c
