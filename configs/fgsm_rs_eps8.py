"""FGSM-RS (Wong et al. 2020, `locuslab/fast_adversarial` CIFAR10/train_fgsm.py) on CIFAR-10.

PreActResNet-18, ε = 8/255, η ~ U(−ε, ε), α = 1.25ε (10/255), cyclic lr 0 → 0.2 → 0,
batch 128, 15 epochs, SGD momentum 0.9, weight decay 5e-4.

  python launch.py --config=configs/fgsm_rs_eps8.py --workdir=runs/fgsm_rs_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected (paper / RobustBench `Wong2020Fast`): clean ≈ 83.3%, PGD-50-10 ≈ 46%, AA ≈ 43.2%.
"""
from fat_jax.config import default_config


def get_config():
  config = default_config()
  config.method.name = 'fgsm_rs'
  config.num_epochs = 15
  config.eval.n = 0  # the whole test set
  return config
