"""ZeroGrad (Golgooni et al., "ZeroGrad: Mitigating and Explaining Catastrophic Overfitting in
FGSM Adversarial Training", 2021) on CIFAR-10 at ε = 8/255, as the `rohban-lab/
catastrophic_overfitting` README runs it (`--epochs=30 --lr-schedule=cyclic --lr-max=0.2
--attack=zerograd --zero-qval=0.35`).

PreActResNet-18; FGSM from U(−ε, ε) with step 2ε (the script's `--fgsm-alpha 2` default) in
train-mode BN, after zeroing the input-gradient coordinates below the per-example
0.35-quantile of |∇|; projection to the ε-ball; SGD momentum 0.9 (not cycled: the script's
cyclic schedule interpolates the lr only), weight decay 5e-4, batch 128, 30 epochs cyclic lr
0 → 0.2 → 0.

  python launch.py --config=configs/zerograd_eps8.py --workdir=runs/zerograd_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: no catastrophic overfitting at ε = 8/255, robust accuracy competitive with the
other single-step methods (the paper's CIFAR-10 table; docs/protocol.md §5: FGSM-RS
PGD-50-10 ≈ 46%).
"""
from fat_jax.config import default_config


def get_config():
  config = default_config()
  config.method.name = 'zerograd'        # q = 0.35, α = 2ε, U(−ε, ε) start
  config.optim.base_momentum = 0.9       # constant momentum
  config.eval.n = 0
  return config
