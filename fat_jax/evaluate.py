"""Robustness evaluation: clean, FGSM and PGD-k-r accuracy, per point.

A point counts as robust to an attack only if it is classified correctly both
clean and under the attack (per-point worst case, as AutoAttack counts).
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fat_jax.attacks import fgsm_attack, pgd_attack
from fat_jax.data import augment, shard_batch
from fat_jax.losses import accuracy


@dataclasses.dataclass(frozen=True)
class PGDSettings:
  """Evaluation attack settings, recorded with every result."""
  eps: float
  steps: int = 50
  restarts: int = 10
  step_size: float = 0.0    # absolute; 0 means ε/4

  @property
  def alpha(self) -> float:
    return self.step_size or self.eps / 4


@functools.partial(jax.jit, static_argnums=(0, 1))
def robust_flags(model, settings: PGDSettings, params, state, images, labels, key):
  """Per-example correctness {'clean', 'fgsm', 'pgd'} in eval mode (BN running stats)."""
  x = augment(key, images, mode='none')
  clean = accuracy(model.apply(params, state, x, False)[0], labels)
  eps = settings.eps
  fgsm = fgsm_attack(model.apply, params, state, x, labels, key, eps=eps, alpha=eps, train=False)
  pgd = pgd_attack(model.apply, params, state, x, labels, key, eps=eps, alpha=settings.alpha,
                   steps=settings.steps, restarts=settings.restarts)
  fgsm_ok = accuracy(model.apply(params, state, x + fgsm.delta, False)[0], labels)
  pgd_ok = accuracy(model.apply(params, state, x + pgd.delta, False)[0], labels)
  return {'clean': clean, 'fgsm': clean * fgsm_ok, 'pgd': clean * pgd_ok}


def evaluate_robustness(model, params, state, images, labels, settings: PGDSettings, *,
                        mesh, batch_size: int, seed: int = 0, desc: str = 'eval',
                        progress: bool = True) -> dict:
  """Clean / FGSM / PGD accuracy over uint8 `images`, padded to whole batches.

  Returns the accuracies, the per-point flags, the settings and the wall time.
  """
  n = len(images)
  start = time.time()
  chunks = []
  for i, lo in enumerate(tqdm(range(0, n, batch_size), desc=desc, leave=False,
                              disable=not progress, unit='batch')):
    x, y = images[lo:lo + batch_size], labels[lo:lo + batch_size]
    pad = batch_size - len(x)
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros((pad,), y.dtype)])
    xb, yb = shard_batch((x, y), mesh)
    key = jax.random.fold_in(jax.random.key(seed), i)
    out = robust_flags(model, settings, params, state, xb, yb, key)
    chunks.append({k: np.asarray(v)[:batch_size - pad] for k, v in out.items()})
  flags = {k: np.concatenate([c[k] for c in chunks]).astype(bool) for k in chunks[0]}
  return {
      **{f'{k}_accuracy': float(v.mean()) for k, v in flags.items()},
      'n': n, 'eps': settings.eps, 'pgd_steps': settings.steps,
      'pgd_restarts': settings.restarts, 'pgd_step_size': settings.alpha,
      'seed': seed, 'wall_time_s': time.time() - start, 'flags': flags,
  }
