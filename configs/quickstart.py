"""Quickstart: catastrophic overfitting on CPU in a few minutes (Fashion-MNIST).

A 4-conv CNN (width 16, BatchNorm) on the first 20k Fashion-MNIST training images (the
Debian package dataset-fashion-mnist, found automatically at
/usr/share/datasets/fashion-mnist), ε = 0.15, cyclic lr 0 → 0.1 → 0, 6 epochs, batch 128.
The argument picks the method (default fgsm):

  python launch.py --config=configs/quickstart.py:fgsm --workdir=runs/quickstart/fgsm
  python launch.py --config=configs/quickstart.py:n_fgsm --workdir=runs/quickstart/n_fgsm

`bash scripts/quickstart.sh` sets up and runs both, then prints the comparison.
The argument also takes the seed papers' variants with their published ε = 8/255
CIFAR-10 hyper-parameters (β, λ1–λ3 are not re-tuned for this setting): v_lap, r_lap,
n_lap, rs_aaer, n_aaer; and gradalign (with λ = 0.2, its ε = 8/255 value: the
CIFAR-10 rule λ(ε) does not transfer to ε = 0.15 on Fashion-MNIST). The baselines
of docs/protocol.md §2.5 with their official hyper-parameters in this setting's schedule:
pgd_at (PGD-10, step ε/4), trades (β = 6), mart (β = 5), awp_pgd_at (γ = 0.01),
awp_trades (γ = 0.005; AWP from the first epoch), zerograd (q = 0.35, α = 2ε) and
atas (warm-up 1 epoch and state re-drawn every 2: the official 5 and 10 of 30
epochs, scaled to 6), dart (PGD-10 stopped at FOSC ≤ c_t, c_max = 0.5, c_t = 0 from epoch 5
of 6: the official T' = 100 of 120 epochs, scaled) and mma (PGD-10, the MMA objective).
Expected: FGSM falls into CO, N-FGSM does not; the measured numbers are in README.md
"Results" and docs/cpu_studies.md.
"""
from fat_jax.config import default_config
from fat_jax.recipes import AWP_GAMMA, set_aaer, set_lap


def get_config(method: str = 'fgsm'):
  config = default_config()
  variant, _, family = method.partition('_')
  if family == 'lap':
    set_lap(config, variant, 8)
  elif family == 'aaer':
    set_aaer(config, variant, 8)
  else:
    config.method.name = method
  if method == 'gradalign':
    config.method.gradalign.lam = 0.2
  if method.startswith('awp_'):
    config.method.name = method[len('awp_'):]
    config.method.awp.gamma = AWP_GAMMA[config.method.name]
  if method == 'dart':
    config.method.dart.control_epochs = 5.0
  if method == 'atas':
    config.method.atas.warmup_epochs = 1
    config.method.atas.reset_every = 2
  config.data.name = 'fashion_mnist'
  config.data.n_train = 20000
  config.model.name = 'cnn'
  config.model.width = 16
  config.model.depth = 4
  config.model.batchnorm = True
  config.eps = 0.15
  config.optim.lr_max = 0.1
  config.num_epochs = 6
  config.eval.n = 1000
  config.eval.monitor_n = 500
  config.eval.pgd_steps = 20
  config.eval.pgd_restarts = 2
  # Robust accuracies here are 0.2–0.5 (CIFAR-10: ≈ 0.45), so CO is a drop of 0.1 below the best.
  config.co_monitor.drop = 0.1
  return config
