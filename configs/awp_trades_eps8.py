"""TRADES-AWP (Wu et al., NeurIPS 2020) on CIFAR-10 at ε = 8/255, as `csdongxian/AWP
trades_AWP/train_trades_cifar.py` runs it.

TRADES (β = 6; KL attack in eval-mode BN from x + 0.001·N(0, I), 10 steps of 2/255) plus AWP
with γ = 0.005 on every conv/linear kernel, from the TRADES loss's gradient (the official
proxy), off for the first 9 epochs (the official `epoch >= 10` with 1-based epochs); SGD lr
0.1, momentum 0.9, weight decay 5e-4, batch 128, 200 epochs, lr ×0.1 from (1-based) epoch
100 and ×0.01 from 150. The training forwards run in the official loop's order (f(x'), f(x),
f(x)). Network: the script's default `--arch WideResNet34` (WideResNet-34-10) on raw [0, 1]
pixels; argument `preact_resnet18` for PreActResNet-18 with fat_jax's input normalisation
inside the model (small machines).

  python launch.py --config=configs/awp_trades_eps8.py --workdir=runs/awp_trades_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected (official WideResNet-34-10): clean 85.36%, AutoAttack 56.17% (`csdongxian/AWP`
README).
"""
from fat_jax.config import default_config
from fat_jax.recipes import AWP_GAMMA, set_network


def get_config(network: str = 'wrn34_10'):
  config = default_config()
  set_network(config, network)           # 'wrn34_10' (official) | 'preact_resnet18'
  config.model.normalize = network != 'wrn34_10'  # the official code feeds raw [0, 1] pixels
  config.method.name = 'trades'
  config.method.alpha = 0.25             # 2/255 at ε = 8/255
  config.method.awp.gamma = AWP_GAMMA['trades']
  config.method.awp.warmup_epochs = 9
  config.num_epochs = 200
  config.optim.schedule = 'multistep'
  config.optim.lr_max = 0.1
  config.optim.milestones = (99, 149)    # 0-based epochs: the official 100 and 150 (1-based)
  config.eval.n = 0
  return config
