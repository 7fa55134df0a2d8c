"""FGSM-AT with zero init ("V-FGSM"), α = ε, on CIFAR-10: the classic catastrophic overfitting.

PreActResNet-18, ε = 8/255, η = 0, α = 1.0ε, Π_ε, cyclic lr 0 → 0.2 → 0, batch 128,
30 epochs (the V-LAP baseline of the LAP paper, without the weight perturbation).

  python launch.py --config=configs/fgsm_eps8.py --workdir=runs/fgsm_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: catastrophic overfitting (PGD accuracy → ≈ 0% while FGSM accuracy rises);
the CO monitor flags the onset epoch. With --config.co_monitor.early_stop=True the run stops
there and evaluates the last good epoch.
"""
from fat_jax.config import default_config


def get_config():
  config = default_config()
  config.method.name = 'fgsm'
  config.eval.n = 0
  return config
