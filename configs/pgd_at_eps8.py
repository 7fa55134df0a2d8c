"""PGD-AT (Madry et al.), fast schedule, on CIFAR-10.

PreActResNet-18, ε = 8/255, PGD-10 with step 2/255 (0.25ε) from a uniform random start,
attack in train-mode BN, cyclic lr 0 → 0.2 → 0, batch 128, 30 epochs.

  python launch.py --config=configs/pgd_at_eps8.py --workdir=runs/pgd_at_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: no catastrophic overfitting; PGD-50-10 accuracy at or above FGSM-RS's (≈ 46%) at
about 10× its cost per epoch (docs/protocol.md §5: PGD-10 ≈ 5× LAP).
"""
from fat_jax.config import default_config


def get_config():
  config = default_config()
  config.method.name = 'pgd_at'
  config.method.steps = 10
  config.method.alpha = 0.25
  config.eval.n = 0
  return config
