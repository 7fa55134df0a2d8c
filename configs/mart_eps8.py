"""MART (Wang et al., ICLR 2020) on CIFAR-10 at ε = 8/255, as `YisenWang/MART
train_resnet.py` runs it.

ResNet-18; PGD-10 CE attack in eval-mode BatchNorm from x + 0.001·N(0, I), steps of 0.007;
loss BCE(f(x'), y) + 5·KL(p(x) ‖ p(x'))·(1 − p_y(x)); SGD lr 0.01, momentum 0.9, weight
decay 3.5e-3, batch 128, 120 epochs, lr ×0.1 from (1-based) epoch 75, ×0.01 from 90, ×0.001
from 100; random crop + flip. Differences: fat_jax normalises the input inside the model (the
official code feeds raw [0, 1] pixels) and the official radius is ε = 0.031 (add
`--config.eps=0.031 --config.method.alpha=0.22580645` for exactly its 0.007 step at 0.031).
`train_wideresnet.py` (WideResNet-34-10, β = 6, lr 0.1, weight decay 2e-4, 76 epochs) needs a
model fat_jax does not provide.

  python launch.py --config=configs/mart_eps8.py --workdir=runs/mart_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: higher PGD-20 robust accuracy than PGD-AT and TRADES in the MART paper's ResNet-18
white-box comparison; with AWP on WideResNet-34-10 the authors' MART model reaches clean
84.43%, AutoAttack 54.23% (`csdongxian/AWP` README).
"""
from fat_jax.config import default_config


def get_config():
  config = default_config()
  config.method.name = 'mart'            # β = 5, PGD-10 × 0.007, eval-mode BN
  config.model.name = 'resnet18'
  config.num_epochs = 120
  config.optim.schedule = 'multistep'
  config.optim.lr_max = 0.01
  config.optim.weight_decay = 3.5e-3
  config.optim.milestones = (74, 89, 99)  # 0-based epochs: the official 75, 90, 100 (1-based)
  config.optim.gamma = 0.1
  config.eval.n = 0
  return config
