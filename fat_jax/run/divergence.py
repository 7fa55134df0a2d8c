"""Divergence: non-finite values anywhere in a state pytree, and a diverged model's symptoms.

The loss is computed before each update, so a step can turn finite weights into NaN or
inf with a finite loss; the training loop therefore checks every floating leaf of its
state (parameters, BatchNorm statistics, optimiser state, per-example state) before each
checkpoint and before the final evaluation. The check is one jitted reduction on device;
only when it fails are the offending leaves located on the host, for the message.

Weights can also diverge without leaving float32's range (to 1e21, say): the state is finite,
but its forwards overflow. `check_loss` bounds the epoch's cross-entropy and `check_monitor`
refuses a monitor result (`fat_jax.evaluate.evaluate_robustness`) with NaN or inf logits or
non-finite numbers, so that nothing computed from such a state is logged, saved or reported.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.parallel import to_host


class DivergenceError(FloatingPointError):
  """Training produced NaN or inf (in the loss or in the state)."""


def _floating(tree) -> list:
  return [x for x in jax.tree.leaves(tree)
          if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.inexact)]


@jax.jit
def _all_finite(leaves) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] or [jnp.array(True)]))


def all_finite(tree) -> bool:
  """Whether every floating-point leaf of `tree` is finite (one reduction on device)."""
  return bool(_all_finite(_floating(tree)))


def non_finite_paths(tree) -> list[str]:
  """The paths of the floating-point leaves of `tree` holding NaN or inf."""
  return [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.inexact)
          and not np.isfinite(to_host(x)).all()]


# The epoch's mean cross-entropy at the training points may reach this many times ln C (C
# classes; ln C is a uniform guess's): above it the true class gets probability C^-100 on
# (geometric) average, which no training in progress produces, only logits blown up by
# diverging weights. Measured runs stay near ln C (docs/reliability.md).
CE_BOUND_PER_LN_CLASSES = 100


def _listed(names: list[str], limit: int) -> str:
  return ', '.join(names[:limit]) + (f' and {len(names) - limit} more' if len(names) > limit
                                     else '')


def check_finite(tree, when: str, last_good: Callable[[], str], limit: int = 5) -> None:
  """Raise `DivergenceError` if a floating leaf of `tree` is not finite; the message says
  `when` it was found, which leaves (at most `limit`) and `last_good()` (what to fall back
  on, computed only then)."""
  if all_finite(tree):
    return
  raise DivergenceError(f'Training diverged: NaN or inf in the state {when} '
                        f'({_listed(non_finite_paths(tree), limit)}). {last_good()}')


def ce_bound(num_classes: int) -> float:
  """The largest mean training cross-entropy of a run that has not diverged."""
  return CE_BOUND_PER_LN_CLASSES * math.log(num_classes)


def check_loss(ce: float, num_classes: int, when: str, last_good: Callable[[], str]) -> None:
  """Raise `DivergenceError` if the mean training cross-entropy `ce` is above
  `ce_bound(num_classes)` (or NaN). The cross-entropy, not the whole loss: the regularisers'
  scale and sign depend on the method and the model."""
  bound = ce_bound(num_classes)
  if not ce <= bound:
    raise DivergenceError(
        f'Training diverged: the training cross-entropy {when} is {ce:.4g}, above the bound '
        f'{bound:.4g} ({CE_BOUND_PER_LN_CLASSES} ln {num_classes}, a true-class probability of '
        f'{num_classes}^-{CE_BOUND_PER_LN_CLASSES}): the weights have blown up. {last_good()}')


def monitor_problems(result: dict, limit: int = 5) -> list[str]:
  """What in a monitor result (`evaluate_robustness`) shows a diverged model: points with NaN
  or inf logits (at the clean, FGSM or PGD point) and non-finite accuracies, V_act or FOSC."""
  problems = []
  if result['non_finite_logits']:
    problems.append(f"NaN or inf logits on {result['non_finite_logits']} of {result['n']} "
                    'points')
  values = {**{f'{k}_accuracy': result[f'{k}_accuracy'] for k in ('clean', 'fgsm', 'pgd')},
            'fosc_fgsm': result['fosc_fgsm'], 'fosc_pgd': result['fosc_pgd'],
            **{f'vact[{node}]': v for node, v in result['vact'].items()},
            **{f'vact_pgd[{node}]': v for node, v in result['vact_pgd'].items()}}
  bad = [name for name, v in values.items() if not math.isfinite(v)]
  if bad:
    problems.append(f'non-finite {_listed(bad, limit)}')
  return problems


def check_monitor(result: dict, when: str, last_good: Callable[[], str]) -> None:
  """Raise `DivergenceError` if `monitor_problems(result)` finds any: finite weights so large
  that the model's forwards overflow (its predictions are then argmaxes of NaN)."""
  problems = monitor_problems(result)
  if problems:
    raise DivergenceError(f"Training diverged: {'; '.join(problems)} {when} (the weights are "
                          f'too large for float32 forwards). {last_good()}')
