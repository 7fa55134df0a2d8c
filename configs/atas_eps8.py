"""ATAS (Huang et al., "Fast Adversarial Training with Adaptive Step Size", TIP 2023) on
CIFAR-10 at ε = 8/255, as `HuangZhiChao95/ATAS ATAS_CIFAR.sh` runs it.

PreActResNet-18; one FGSM step in eval-mode BN from each example's previous perturbation
(kept on the padded canvas so that it follows the crops and flips, re-drawn U(−ε, ε) before
1-based epochs 10 and 20), step ε for the first 5 epochs, then the per-example step
clip(16/255 / (1 + √v/c), 4/255, 14/255) with v the running squared input-gradient norm
(β = 0.5, c = 0.01); SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, 30 epochs, lr
×0.1 after 24 and 28 epochs. Difference: the official model normalises with the ImageNet
mean/std, fat_jax's with the CIFAR-10 statistics.

  python launch.py --config=configs/atas_eps8.py --workdir=runs/atas_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: no catastrophic overfitting at ε = 8/255 with a single gradient per step (the
paper's claim for PreActResNet-18 on CIFAR-10).
"""
from fat_jax.config import default_config


def get_config():
  config = default_config()
  config.method.name = 'atas'            # c = 0.01, β = 0.5, steps in [0.5ε, 1.75ε], scale 2ε
  config.optim.schedule = 'multistep'
  config.optim.lr_max = 0.1
  config.optim.milestones = (24, 28)
  config.eval.n = 0
  return config
