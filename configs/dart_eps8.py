"""Dynamic Adversarial Training (DART; Wang et al., ICML 2019, "On the Convergence and
Robustness of Adversarial Training") on CIFAR-10 at ε = 8/255, following the official
`YisenWang/dynamic_adv_training` (`train_models.py`, `pgd_attack.py`).

PGD-10 with α = ε/4 from a uniform start, attack forwards in inference-mode BatchNorm; each
example stops once its FOSC ≤ c_t, c_t = max(0.5 − 0.5·t/100, 0) at 0-based epoch t (the
official `fosc_max` = 0.5, `dynamic_epoch` = 100), the first step always taken; 120 epochs,
batch 128, SGD lr 0.01, momentum 0.9, lr ÷ 10 at the start of (0-based) epochs 59 and 99 (the
official `(ep + 1) == 60`, `== 100`); from epoch 1 on each example's CE weighted by its own
CE at the DART point and reduced as Keras 2.2 does (`method.dart.weighting='ce'`, the official
`sample_weight`; docs/lecture_systems.md). Differences (docs/deviations.md): the official Keras
per-iteration decay lr/(1 + 10⁻⁴·iteration) is not applied (the `multistep` schedule has its
two drops only); weight decay is fat_jax's default 5e-4; PreActResNet-18 instead of the Keras
`WideResNet(depth=5)`; random crop + flip instead of rotation/shift/flip; ε = 8/255 (the
official 0.031).

  python launch.py --config=configs/dart_eps8.py --workdir=runs/dart_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: no catastrophic overfitting (a multi-step attack); the paper reports robustness
comparable to or better than PGD-AT (Madry) at a lower attack cost in early epochs
(`train_dart_steps` in metrics.jsonl is the mean number of PGD steps per example).
"""
from fat_jax.config import default_config


def get_config():
  config = default_config()
  config.method.name = 'dart'            # PGD-10 × ε/4, eval-mode BN, FOSC stop at c_t
  config.method.dart.c_max = 0.5
  config.method.dart.control_epochs = 100.0
  config.method.dart.weighting = 'ce'    # CE × own CE at the DART point from epoch 1
  config.num_epochs = 120
  config.optim.schedule = 'multistep'
  config.optim.lr_max = 0.01
  config.optim.milestones = (59, 99)     # 0-based epochs: the official (ep + 1) == 60, == 100
  config.optim.gamma = 0.1
  config.eval.n = 0
  return config
