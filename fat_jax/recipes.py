"""The published recipes of the seed papers, as config builders (SPEC §2.2–2.3, 2.5).

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


def _pick(table: dict, variant: str, what: str):
  if variant not in table:
    raise ValueError(f'{what} has no variant {variant!r}; known: {sorted(table)}.')
  return table[variant]


def set_lap(c, variant: str, eps_255: int) -> None:
  """Make `c.method` the `variant` LAP with the README's β for ε = eps_255/255, γ = 0.3."""
  c.method.name = 'lap'
  c.method.lap_beta = _pick(LAP_BETAS[eps_255], variant, f'LAP at ε={eps_255}')
  c.method.lap_gamma = 0.3
  c.method.init, c.method.init_scale, c.method.alpha, c.method.project = VARIANTS[variant]


def set_aaer(c, variant: str, eps_255: int, data: str = 'cifar10') -> None:
  """Make `c.method` the `variant` AAER with the README's λ1..3 for (data, ε = eps_255/255)."""
  c.method.name = 'aaer'
  lambdas = _pick(AAER_LAMBDAS[(data, eps_255)], variant, f'AAER on {data} at ε={eps_255}')
  c.method.init, c.method.init_scale, c.method.alpha, c.method.project = VARIANTS[variant]
  c.method.aaer_lambda1, c.method.aaer_lambda2, c.method.aaer_lambda3 = lambdas


def _cifar(eps_255: int, data: str = 'cifar10'):
  c = default_config()
  c.data.name = data
  c.eps = eps_255 / 255
  c.eval.n = 0
  return c


def lap_config(eps_255: int, variant: str = 'n'):
  """V-, R- or N-LAP on CIFAR-10 at ε = eps_255/255 with the README's β, γ = 0.3."""
  c = _cifar(eps_255)
  set_lap(c, variant, eps_255)
  return c


def aaer_config(eps_255: int, variant: str = 'n', data: str = 'cifar10'):
  """RS- or N-AAER at ε = eps_255/255 with the README's λ1, λ2, λ3."""
  c = _cifar(eps_255, data)
  set_aaer(c, variant, eps_255, data)
  return c


def gradalign_config(eps_255: int):
  """GradAlign (FGSM zero init, α = 1.25ε) on CIFAR-10, λ = 0.02·10^(ε·255/8), lr_max 0.3."""
  c = _cifar(eps_255)
  c.method.name = 'gradalign'
  c.optim.lr_max = 0.3
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
