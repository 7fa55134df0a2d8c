"""LAP (ICML 2024) on CIFAR-100 at ε = 8/255, with the arguments of the official
``tmllab/2024_ICML_LAP`` ``CIFAR100/LAP.py``: PreActResNet-18 with 100 classes, 30 epochs,
batch 128, cyclic lr 0.2, 21 perturbed layers, ``RandomCrop(32, padding=4)`` + flip and
CIFAR-100's μ/σ (``CIFAR100/utils.py``); variant argument v, r or n (default n: U(−2ε, 2ε),
α = ε, no clamp) with β and γ = 0.3 of the README's ε = 8 commands, as configs/lap_eps8.py
(the README has none for CIFAR-100; ``LAP.py``'s argparse defaults are β = 0.01, γ = 1.0:
--config.method.lap.beta=0.01 --config.method.lap.gamma=1.0). Final evaluation PGD-50 with 1
restart, as the official script (``evaluate_pgd(test_loader, model_test, 50, 1, epsilon)``).

  python launch.py --config=configs/lap_cifar100_eps8.py:n --workdir=runs/lap_cifar100_eps8_n \\
      --config.data.dir=PATH_WITH_cifar-100-python

Expected: no catastrophic overfitting (no run of it has been measured here).
"""
from fat_jax.recipes import lap_config


def get_config(variant: str = 'n'):
  c = lap_config(8, variant)
  c.data.name = 'cifar100'
  return c
