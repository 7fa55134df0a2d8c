"""CIFAR-10 at CPU scale: PreActResNet-18 of width 16 on 5000 real CIFAR-10 training images.

The 5000-image / 1000-test subset in the original python-pickle format (cifar-10-batches-py),
ε = 8/255 by default, cyclic lr 0 → 0.2 → 0 over 20 epochs, batch 32 (156 steps per epoch),
weight decay 5e-4, random crop and flip; final evaluation on all test images with PGD-20
(1 restart, step ε/4), the monitor PGD-10 on the first 500, CO flagged at a PGD drop of 0.1.
The argument is `<method>[_eps<E>]` (default fgsm, ε = E/255 with E in 8, 12, 16, 32):

  python launch.py --config=configs/cifar_subset.py:fgsm --workdir=runs/cifar/fgsm_eps8 \\
      --config.data.dir=../shared/data/cifar-10-subset
  python launch.py --config=configs/cifar_subset.py:n_fgsm_eps16 --workdir=... --config.data.dir=...

Methods: fgsm (zero init, α = ε: "V-FGSM"), fgsm_rs (U(−ε, ε), α = 1.25ε), n_fgsm, pgd_at
(PGD-10, step ε/4), gradalign (λ = 0.02·10^(E/8), GradAlign's CIFAR-10 rule), v_lap, r_lap,
n_lap (the LAP README's β for ε), rs_aaer, n_aaer (the AAER README's λ1..3 for ε).
Expected (fgsm, seed 0, one run each, 1000 test images): at 8/255 no catastrophic overfitting
(clean 0.503, FGSM 0.329, PGD-20 0.309); at 12/255 CO at a low level (clean 0.244, FGSM 0.144,
PGD-20 0.000; in CO by the setting's rule from epoch 15). The ε sweep over seeds:
scripts/cifar_sweep.py.
How the width, ε and epoch count were chosen, with the probes' numbers: docs/cifar_study.md
"Setting".
"""
from fat_jax.config import default_config
from fat_jax.recipes import LAP_BETAS, set_aaer, set_lap

WIDTH = 16
EPOCHS = 20
BATCH = 32


def _parse(arg: str):
  method, sep, eps = arg.rpartition('_eps')
  if not sep:
    return arg, 8
  if not eps.isdigit() or int(eps) not in LAP_BETAS:
    raise ValueError(f'Expected <method>[_eps<E>] with E in {sorted(LAP_BETAS)}, got {arg!r}.')
  return method, int(eps)


def get_config(arg: str = 'fgsm'):
  method, eps_255 = _parse(arg)
  config = default_config()
  variant, _, family = method.partition('_')
  if family == 'lap':
    set_lap(config, variant, eps_255)
  elif family == 'aaer':
    set_aaer(config, variant, eps_255)
  elif method == 'fgsm':
    config.method.name = 'fgsm'
    config.method.init, config.method.alpha, config.method.project = 'zero', 1.0, True
  else:
    config.method.name = method
  config.data.name = 'cifar10'
  config.model.name = 'preact_resnet18'
  config.model.width = WIDTH
  config.eps = eps_255 / 255
  config.num_epochs = EPOCHS
  config.batch_size = BATCH
  config.eval.n = 0
  config.eval.monitor_n = 500
  config.eval.pgd_steps = 20
  config.eval.pgd_restarts = 1
  # Robust accuracies here stay at or below 0.33 (FGSM at 12/255 peaks at PGD-10 0.102): smaller
  # thresholds than the default 0.2 and 0.2 (docs/cifar_study.md, "The sweep so far").
  config.co_monitor.drop = 0.05
  config.co_monitor.gap = 0.1
  return config
