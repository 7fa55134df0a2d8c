"""MART (Wang et al., ICLR 2020) on CIFAR-10 at ε = 8/255, as `YisenWang/MART` runs it.

Default: `train_wideresnet.py`, WideResNet-34-10 on raw [0, 1] pixels, β = 6, SGD lr 0.1,
momentum 0.9, weight decay 2e-4, batch 128, 76 epochs, lr ×0.1 from (1-based) epoch 75.
Argument `resnet18`: `train_resnet.py`, ResNet-18, β = 5, lr 0.01, weight decay 3.5e-3, 120
epochs, lr ×0.1 from (1-based) epoch 75, ×0.01 from 90, ×0.001 from 100, with fat_jax's input
normalisation inside the model. Both: PGD-10 CE attack in eval-mode BatchNorm from
x + 0.001·N(0, I), steps of 0.007; loss BCE(f(x'), y) + β·KL(p(x) ‖ p(x'))·(1 − p_y(x)); random
crop + flip. Difference: the official radius is ε = 0.031 (add `--config.eps=0.031
--config.method.alpha=0.22580645` for exactly its 0.007 step at 0.031).

  python launch.py --config=configs/mart_eps8.py --workdir=runs/mart_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: higher PGD-20 robust accuracy than PGD-AT and TRADES in the MART paper's
comparisons; with AWP on WideResNet-34-10 the authors' MART model reaches clean 84.43%,
AutoAttack 54.23% (`csdongxian/AWP` README).
"""
from fat_jax.config import default_config
from fat_jax.recipes import set_network


def get_config(network: str = 'wrn34_10'):
  config = default_config()
  config.method.name = 'mart'            # β = 5 (6 below), PGD-10 × 0.007, eval-mode BN
  set_network(config, network)           # 'wrn34_10' (train_wideresnet.py) | 'resnet18'
  config.optim.schedule = 'multistep'
  config.optim.gamma = 0.1
  config.eval.n = 0
  if network != 'wrn34_10':              # train_resnet.py
    config.num_epochs = 120
    config.optim.lr_max = 0.01
    config.optim.weight_decay = 3.5e-3
    config.optim.milestones = (74, 89, 99)  # 0-based epochs: the official 75, 90, 100 (1-based)
    return config
  config.model.normalize = False         # the official code feeds raw [0, 1] pixels
  config.method.mart.beta = 6.0
  config.num_epochs = 76
  config.optim.lr_max = 0.1
  config.optim.weight_decay = 2e-4
  config.optim.milestones = (74,)        # 0-based epochs: the official `epoch >= 75`, 1-based
  return config
