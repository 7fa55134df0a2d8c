"""The published recipes of the seed papers, as config builders (docs/protocol.md §2.2–2.3, 2.5).

Each maps the README flags of the official code onto the config:
`--delta-init zero|random` and `--clamp 1|0` → `method.init/init_scale/project`
(random = U(−ε, ε) with clamp 1, U(−2ε, 2ε) with clamp 0), `--alpha` →
`method.alpha` (× ε). All: PreActResNet-18, 30 epochs, cyclic lr 0 → 0.2 → 0,
batch 128, SGD momentum 0.9, weight decay 5e-4.
"""
from __future__ import annotations

from fat_jax.config import default_config

# variant: (init, init_scale, alpha × ε, project)
VARIANTS = {
    'v': ('zero', 1.0, 1.0, True),       # LAP "V": zero init, α = ε, clamp
    'r': ('uniform', 1.0, 1.25, True),   # LAP "R" / AAER "RS": U(−ε, ε), α = 1.25ε, clamp
    'rs': ('uniform', 1.0, 1.25, True),
    'n': ('uniform', 2.0, 1.0, False),   # "N": U(−2ε, 2ε), α = ε, no clamp
}

# tmllab/2024_ICML_LAP README, CIFAR-10, γ = 0.3: ε (/255) → β per variant.
LAP_BETAS = {
    8: {'v': 0.03, 'r': 0.002, 'n': 0.001},
    12: {'v': 0.058, 'r': 0.03, 'n': 0.002},
    16: {'v': 0.07, 'r': 0.05, 'n': 0.005},
    32: {'v': 0.48, 'r': 0.3, 'n': 0.75},
}

# tmllab/2023_NeurIPS_AAER README: (data, ε /255) → variant → (λ1, λ2, λ3).
AAER_LAMBDAS = {
    ('cifar10', 8): {'rs': (1.0, 2.5, 1.5), 'n': (1.0, 1.5, 0.15)},
    ('cifar10', 12): {'rs': (1.0, 5.0, 2.75), 'n': (1.0, 5.0, 0.55)},
    ('cifar10', 16): {'rs': (1.0, 7.0, 3.25), 'n': (1.0, 8.5, 1.5)},
    ('cifar10', 32): {'rs': (1.0, 5.75, 1.5), 'n': (1.0, 2.75, 0.75)},
    ('cifar100', 8): {'rs': (1.0, 3.5, 1.5), 'n': (1.0, 1.5, 0.15)},
    ('cifar100', 12): {'rs': (1.0, 3.5, 2.75), 'n': (1.0, 3.5, 0.3)},
    ('cifar100', 16): {'rs': (1.0, 6.0, 2.25), 'n': (1.0, 6.0, 0.5)},
    ('cifar100', 32): {'rs': (1.0, 5.0, 0.75), 'n': (1.0, 3.5, 0.5)},
}

# csdongxian/AWP: weight-perturbation strength γ per base method (AT-AWP, TRADES-AWP).
AWP_GAMMA = {'pgd_at': 0.01, 'trades': 0.005}


# Networks a recipe argument names: model config fields. 'wrn34_10' is the WideResNet-34-10 of
# TRADES, MART, AWP and LAP (`WideResNet(34, 10, 10)` in LAP.py for `--model WideResNet`).
NETWORKS = {
    'wrn34_10': {'name': 'wide_resnet', 'depth': 34, 'widen_factor': 10},
    'resnet18': {'name': 'resnet18'},
    'preact_resnet18': {'name': 'preact_resnet18'},
}


def set_network(c, network: str) -> None:
  """Make `c.model` the network `network`, a key of `NETWORKS`."""
  for field, value in _pick(NETWORKS, network, 'the recipe').items():
    c.model[field] = value


def _pick(table: dict, variant: str, what: str):
  if variant not in table:
    raise ValueError(f'{what} has no variant {variant!r}; known: {sorted(table)}.')
  return table[variant]


def set_lap(c, variant: str, eps_255: int) -> None:
  """Make `c.method` the `variant` LAP with the README's β for ε = eps_255/255 (γ: `LAP`'s,
  the README's 0.3)."""
  c.method.name = 'lap'
  c.method.lap.beta = _pick(LAP_BETAS[eps_255], variant, f'LAP at ε={eps_255}')
  c.method.init, c.method.init_scale, c.method.alpha, c.method.project = VARIANTS[variant]


def set_aaer(c, variant: str, eps_255: int, data: str = 'cifar10') -> None:
  """Make `c.method` the `variant` AAER with the README's λ1..3 for (data, ε = eps_255/255)."""
  c.method.name = 'aaer'
  lambdas = _pick(AAER_LAMBDAS[(data, eps_255)], variant, f'AAER on {data} at ε={eps_255}')
  c.method.init, c.method.init_scale, c.method.alpha, c.method.project = VARIANTS[variant]
  c.method.aaer.lambda1, c.method.aaer.lambda2, c.method.aaer.lambda3 = lambdas


def _cifar(eps_255: int, data: str = 'cifar10'):
  c = default_config()
  c.data.name = data
  c.eps = eps_255 / 255
  c.eval.n = 0
  return c


def lap_config(eps_255: int, variant: str = 'n'):
  """V-, R- or N-LAP on CIFAR-10 at ε = eps_255/255 with the README's β, γ = 0.3; final
  evaluation PGD-50 with 1 restart, as the official CIFAR-10 script (`tmllab/2024_ICML_LAP`)."""
  c = _cifar(eps_255)
  set_lap(c, variant, eps_255)
  c.eval.pgd_restarts = 1
  return c


def aaer_config(eps_255: int, variant: str = 'n', data: str = 'cifar10'):
  """RS- or N-AAER at ε = eps_255/255 with the README's λ1, λ2, λ3."""
  c = _cifar(eps_255, data)
  set_aaer(c, variant, eps_255, data)
  return c


def aaer_svhn_config(variant: str = 'n'):
  """AAER on SVHN at ε = 8/255 with the defaults of `tmllab/2023_NeurIPS_AAER` ``SVHN/AAER.py``
  (variant n; rs: U(−ε, ε), α = 1.25ε, clamp 1, same λ): 15 epochs, batch 128, cyclic lr
  0 → 0.05 → 0 rising over 2/5 of the iterations (``CyclicLR(step_size_up=2T/5,
  step_size_down=3T/5)``), SGD momentum 0.9 (cycled 0.9 → 0.8), weight decay 5e-4, the attack
  step warmed up over 5 epochs, λ1 = 1.0, λ2 = 4.0, λ3 = 1.5; ``RandomCrop(32, padding=4)`` +
  flip and SVHN's μ/σ (``SVHN/utils.py``); final evaluation PGD-50-10 on the whole test set."""
  c = _cifar(8, 'svhn')
  set_aaer(c, variant, 8)
  c.method.aaer.lambda1, c.method.aaer.lambda2, c.method.aaer.lambda3 = 1.0, 4.0, 1.5
  c.method.alpha_warmup_epochs = 5.0
  c.data.augment = 'crop_flip'
  c.num_epochs = 15
  c.optim.lr_max = 0.05
  c.optim.cycle_up = 0.4
  return c


def gradalign_config(eps_255: int):
  """GradAlign (FGSM zero init, α = 1.25ε) on CIFAR-10, λ = 0.02·10^(ε·255/8), with its own
  recipe (`tml-epfl/understanding-fast-adv-training` train.py, utils.py, models.py): lr
  0 → 0.3 at 2/5 of training → 0 interpolated per iteration, momentum fixed at 0.9, and its
  PreActResNet-18 (no input normalisation, He-normal init, no head BN-ReLU)."""
  c = _cifar(eps_255)
  c.method.name = 'gradalign'
  c.optim.schedule = 'piecewise_linear'
  c.optim.lr_max = 0.3
  c.model.normalize = False
  c.model.init = 'he_normal'
  c.model.head_bn_relu = False
  return c


def pgd_at_rice_config():
  """PGD-AT as `locuslab/robust_overfitting train_cifar.py` runs it: PreActResNet-18, PGD-10
  step 2/255 in train-mode BN with the loop's extra BatchNorm forwards, SGD lr 0.1, 200 epochs
  piecewise (×0.1 at 50%, ×0.01 at 75%), weight decay 5e-4."""
  c = _cifar(8)
  c.method.name = 'pgd_at'
  c.method.attack_bn = 'train'
  c.method.robust_overfitting_forwards = True
  c.num_epochs = 200
  c.optim.schedule = 'piecewise'
  c.optim.lr_max = 0.1
  return c


# Feature-difference paper (Zhao et al., ECCV 2024) grids and FGSM-MEP's per-data reset period
# (`jiaxiaojunQAQ/FGSM-PGI`: --epochs_reset 40 in FGSM_MEP.py, 10 in FGSM_MEP_cifar100.py).
FD_EPS = (8, 10, 12, 14, 16)
FD_ALPHA3 = (100, 200, 300, 400, 1000)
FD_PERCENT = (1, 3, 10, 20)
FD_EVAL_EPS = 16
MEP_RESET_EVERY = {'cifar10': 40, 'cifar100': 10}


def mep_config(eps_255: int = 8, data: str = 'cifar10'):
  """FGSM-MEP with the defaults of `jiaxiaojunQAQ/FGSM-PGI FGSM_MEP.py`: ResNet-18 on
  un-normalised [0, 1] inputs, batch 128, 110 epochs, multistep lr 0.1 (× 0.1 after epochs 100
  and 105), SGD momentum 0.9, weight decay 5e-4, α = ε, label smoothing 0.6, λ = 10, momentum
  decay 0.3."""
  if data not in MEP_RESET_EVERY:
    raise ValueError(f'FGSM-MEP recipes exist for {sorted(MEP_RESET_EVERY)}, got {data!r}.')
  c = _cifar(eps_255, data)
  c.model.name = 'resnet18'
  c.model.normalize = False   # the official ResNet-18 reads [0, 1] pixels
  c.method.name = 'fgsm_mep'
  c.method.mep.reset_every = MEP_RESET_EVERY[data]
  c.num_epochs = 110
  c.optim.schedule = 'multistep'
  c.optim.lr_max = 0.1
  c.optim.milestones = (100, 105)
  c.optim.gamma = 0.1
  return c


def parse_fd_arg(arg: str) -> dict:
  """``<data>_eps<E>[_a<α3>|_p<P>|_mep]`` → {'data', 'eps', 'alpha3' | 'percent' | 'mep'}."""
  fields, parts = {}, arg.split('_')
  if len(parts) < 2 or parts[0] not in MEP_RESET_EVERY or not parts[1].startswith('eps'):
    raise ValueError(f'Expected <data>_eps<E>[_a<alpha3>|_p<percent>|_mep] with data in '
                     f'{sorted(MEP_RESET_EVERY)}, got {arg!r}.')
  fields['data'], fields['eps'] = parts[0], int(parts[1][3:])
  for part in parts[2:]:
    if part == 'mep':
      fields['mep'] = True
    elif part[:1] == 'a' and part[1:].isdigit():
      fields['alpha3'] = float(part[1:])
    elif part[:1] == 'p' and part[1:].isdigit():
      fields['percent'] = float(part[1:])
    else:
      raise ValueError(f'Unknown part {part!r} of {arg!r}; expected a<alpha3>, p<percent> or mep.')
  return fields


def fd_config(eps_255: int = 12, data: str = 'cifar10', alpha3: float = 200.0):
  """FD = FGSM-MEP + L_stable (node B, weight α3) on the FGSM-MEP recipe, evaluated at
  ε = 16/255 as in the feature-difference paper."""
  c = mep_config(eps_255, data)
  c.method.name = 'fd'
  c.method.stable.alpha3 = alpha3
  c.eval.eps = FD_EVAL_EPS / 255
  return c


def induce_co_config(eps_255: int = 8, data: str = 'cifar10', percent: float = 10.0):
  """FGSM-MEP's attack with L_co on the top `percent`% channels of node B by T_act (the T_act
  file comes from ``--mode=analyze`` of a checkpoint: ``--config.method.co.tact_file``)."""
  c = mep_config(eps_255, data)
  c.method.name = 'induce_co'
  c.method.co.percent = percent
  c.eval.eps = FD_EVAL_EPS / 255
  return c
