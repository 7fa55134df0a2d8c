"""AT-AWP (Wu et al., "Adversarial Weight Perturbation Helps Robust Generalization", NeurIPS
2020) on CIFAR-10 at ε = 8/255, as `csdongxian/AWP AT_AWP/train_cifar10.py` runs it.

The PGD-AT recipe of `pgd_at_rice_eps8.py` (PGD-10 step 2/255 in train-mode BN, 200 epochs
piecewise from lr 0.1, the loop's extra BatchNorm forwards) plus AWP: each step,
v_l = γ·‖w_l‖·∇_l/‖∇_l‖ with ∇ the gradient of CE at x + δ (the official one-step proxy on
−CE), γ = 0.01, on every conv/linear kernel; the SGD step is taken at w + v and v removed after
it; AWP from the first epoch (`--awp-warmup 0`). Network: WideResNet-34-10, the one of the
README's AT-AWP results; argument `preact_resnet18` for the PreActResNet-18 of
`pgd_at_rice_eps8.py` (small machines).

  python launch.py --config=configs/awp_pgd_at_eps8.py --workdir=runs/awp_pgd_at_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py

Expected: robust overfitting largely removed (the last checkpoint close to the best); the
authors' AT-AWP WideResNet-34-10 reaches clean 85.36%, AutoAttack 53.97% (`csdongxian/AWP`
README).
"""
from fat_jax.recipes import AWP_GAMMA, pgd_at_rice_config, set_network


def get_config(network: str = 'wrn34_10'):
  config = pgd_at_rice_config()
  set_network(config, network)           # 'wrn34_10' | 'preact_resnet18'
  config.method.awp.gamma = AWP_GAMMA['pgd_at']
  config.method.awp.warmup_epochs = 0
  return config
