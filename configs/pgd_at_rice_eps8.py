"""PGD-AT with the recipe of Rice et al. ("Overfitting in adversarially robust deep learning",
ICML 2020), as `locuslab/robust_overfitting train_cifar.py` runs it, on CIFAR-10 at 8/255.

PreActResNet-18; PGD-10, step 2/255, from U(−ε, ε), attack in train-mode BatchNorm; SGD lr
0.1, momentum 0.9, weight decay 5e-4, batch 128, 200 epochs piecewise (×0.1 at 50%, ×0.01 at
75%). `method.robust_overfitting_forwards` replays the loop's two extra train-mode forwards
(the restart loss after the attack, the clean batch after the update) that update the
BatchNorm running statistics. The official schedule is evaluated at epoch + (i + 1)/N, so
its drops come one iteration earlier than here. `pgd_at_eps8.py` is the fast cyclic recipe.

  python launch.py --config=configs/pgd_at_rice_eps8.py --workdir=runs/pgd_at_rice_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: robust overfitting — test PGD accuracy peaks right after the lr drop at epoch 100
and declines over the last 100 epochs (the paper's Figure 1), so the best checkpoint beats
the last; the authors' early-stopped WideResNet-34-20 reaches clean 85.34%, AutoAttack 53.42%
(`csdongxian/AWP` README leaderboard).
"""
from fat_jax.recipes import pgd_at_rice_config


def get_config():
  return pgd_at_rice_config()
