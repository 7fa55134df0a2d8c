"""The MMA objective (Ding et al., ICLR 2020, "MMA Training: Direct Input Space Margin
Maximization through Adversarial Training") in the adversarial-robustness lecture's
surrogate-loss form, on CIFAR-10 at ε = 8/255:

    L = (1/N) Σ_i [ 1{f(x_i) = y_i}·CE(f(x'_i), y_i) + 1{f(x_i) ≠ y_i}·CE(f(x_i), y_i) ],

x' the point of a PGD-10 CE attack (α = ε/4, uniform start, train-mode BN, as `pgd_at`).
Not MMA as its paper trains: its per-example adaptive margin ε (the closest misclassified
point found by a bisection search) and its mixing with the clean CE are not included
(docs/lecture_systems.md). Schedule as configs/pgd_at_eps8.py (cyclic lr 0 → 0.2 → 0, 30
epochs, PreActResNet-18).

  python launch.py --config=configs/mma_eps8.py --workdir=runs/mma_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: not measured; misclassified clean points are trained on their clean CE only, so
clean accuracy above PGD-AT's is the lecture's motivation.
"""
from fat_jax.config import default_config


def get_config():
  config = default_config()
  config.method.name = 'mma'             # PGD-10 × ε/4, MMA objective
  config.eval.n = 0
  return config
