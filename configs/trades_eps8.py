"""TRADES (Zhang et al., ICML 2019) on CIFAR-10 at ε = 8/255, as `yaodongyu/TRADES
train_trades_cifar10.py` runs it.

KL attack in eval-mode BatchNorm from x + 0.001·N(0, I), 10 steps of 0.007; loss
CE(f(x), y) + 6·KL(p(x) ‖ p(x')); SGD lr 0.1, momentum 0.9, weight decay 2e-4, batch 128,
76 epochs, lr ×0.1 from (1-based) epoch 75; random crop + flip; the script's WideResNet-34-10
(`models/wideresnet.py`) on raw [0, 1] pixels. Argument `resnet18`: the script's named
alternative ResNet-18, with fat_jax's input normalisation inside the model, for small machines.
Difference: the official radius is ε = 0.031 (add `--config.eps=0.031
--config.method.alpha=0.22580645` for exactly its 0.007 step at 0.031).

  python launch.py --config=configs/trades_eps8.py --workdir=runs/trades_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected (official WideResNet-34-10, ε = 0.031): clean 84.92%, AutoAttack 53.08%
(RobustBench `Zhang2019Theoretically`).
"""
from fat_jax.config import default_config
from fat_jax.recipes import set_network


def get_config(network: str = 'wrn34_10'):
  config = default_config()
  config.method.name = 'trades'          # β = 6, KL attack: 10 × 0.007, eval-mode BN
  set_network(config, network)           # 'wrn34_10' (official) | 'resnet18'
  config.model.normalize = network != 'wrn34_10'  # the official code feeds raw [0, 1] pixels
  config.num_epochs = 76
  config.optim.schedule = 'multistep'
  config.optim.lr_max = 0.1
  config.optim.weight_decay = 2e-4
  config.optim.milestones = (74,)        # 0-based epochs: the official `epoch >= 75`, 1-based
  config.eval.n = 0
  return config
