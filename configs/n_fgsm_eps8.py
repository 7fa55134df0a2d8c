"""N-FGSM (de Jorge et al. 2022, `pdejorge/N-FGSM`) on CIFAR-10.

PreActResNet-18, ε = 8/255, η ~ U(−2ε, 2ε), α = ε, no projection (box only), cyclic lr
0 → 0.2 → 0, batch 128, 30 epochs.

  python launch.py --config=configs/n_fgsm_eps8.py --workdir=runs/n_fgsm_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected (paper): clean ≈ 80.5%, PGD-50-10 ≈ 47.5%, AA ≈ 44.2%; no catastrophic overfitting.
"""
from fat_jax.config import default_config


def get_config():
  config = default_config()
  config.method.name = 'n_fgsm'
  config.eval.n = 0
  return config
