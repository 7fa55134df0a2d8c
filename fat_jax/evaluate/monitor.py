"""The training loop's monitor: clean, FGSM and PGD-k-r accuracy per point of a model,
V_act per feature node and FOSC (`evaluate_robustness`, jitted per batch by `robust_flags`).

A point counts as robust to an attack only if it is classified correctly both
clean and under the attack.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fat_jax.attacks import fgsm_attack, fosc_at, pgd_attack
from fat_jax.data import augment, shard_batch
from fat_jax.evaluate.pieces import pad_rows, padded_length, pgd_by_restart
from fat_jax.losses import accuracy
from fat_jax.losses.feature_diff import feature_distance
from fat_jax.parallel import replicate, to_host


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
def robust_flags(model, settings: PGDSettings, params, state, images, labels, key,
                 pgd_delta=None):
  """Per-example correctness {'clean', 'fgsm', 'pgd'} in eval mode (BN running stats), and
  'vact': {'fgsm'|'pgd': {node: ‖M(x) − M(x + δ)‖₂ per example}} from the same forwards, and
  'fosc': {'fgsm'|'pgd': FOSC c(x + δ) per example} (Wang et al., ICML 2019; `fosc_at`), and
  'finite': whether the logits at the clean, FGSM and PGD points are all finite, per example.
  `pgd_delta`: the PGD δ if already computed (`pgd_by_restart` on ``images / 255``)."""
  x = augment(key, images, mode='none')
  clean_logits, _, clean_features = model.apply(params, state, x, False)
  clean = accuracy(clean_logits, labels)
  eps = settings.eps
  fgsm = fgsm_attack(model.apply, params, state, x, labels, key, eps=eps, alpha=eps, train=False)
  if pgd_delta is None:
    pgd_delta = pgd_attack(model.apply, params, state, x, labels, key, eps=eps,
                           alpha=settings.alpha, steps=settings.steps,
                           restarts=settings.restarts).delta
  flags, vact, fosc = {'clean': clean}, {}, {}
  finite = jnp.isfinite(clean_logits).all(axis=-1)
  for name, delta in (('fgsm', fgsm.delta), ('pgd', pgd_delta)):
    fosc[name] = fosc_at(model.apply, params, state, x, labels, delta, eps=eps)
    logits, _, features = model.apply(params, state, x + delta, False)
    flags[name] = clean * accuracy(logits, labels)
    finite &= jnp.isfinite(logits).all(axis=-1)
    vact[name] = {node: feature_distance(clean_features[node], features[node])
                  for node in features}
  return {**flags, 'vact': vact, 'fosc': fosc, 'finite': finite}


@jax.jit
def _to_unit_range(key, images):
  """uint8 images as the monitor's attacks see them (``augment`` mode 'none': images / 255)."""
  return augment(key, images, mode='none')


def evaluate_robustness(model, params, state, images, labels, settings: PGDSettings, *,
                        mesh, batch_size: int, seed: int = 0, desc: str = 'eval',
                        progress: bool = True) -> dict:
  """Clean / FGSM / PGD accuracy over uint8 `images` in batches of `batch_size`, the last one
  padded to `padded_length` (`pad_rows`), each split over `mesh` (`params` and `state` placed on
  all its devices).

  Returns the accuracies, the per-point flags, the settings, the wall time,
  V_act = mean ‖M_i(x) − M_i(x + δ)‖₂ per feature node i (Zhao et al., "Catastrophic
  Overfitting: A Potential Blessing in Disguise") at the FGSM point ('vact') and at the PGD
  point ('vact_pgd'), and 'non_finite_logits': the number of points whose logits hold NaN or
  inf at the clean, FGSM or PGD point (a diverged model: `fat_jax.run.divergence.check_monitor`).
  """
  params, state = replicate((params, state), mesh)
  n = len(images)
  start = time.time()
  chunks = []
  bar = tqdm(total=-(-n // batch_size) * settings.restarts, desc=desc, leave=False,
             disable=not progress, unit='restart')
  for i, lo in enumerate(range(0, n, batch_size)):
    x, y = images[lo:lo + batch_size], labels[lo:lo + batch_size]
    keep = len(x)
    size = padded_length(keep, batch_size, mesh.shape['data'])
    xb, yb = shard_batch((pad_rows(x, size), pad_rows(y, size)), mesh)
    key = jax.random.fold_in(jax.random.key(seed), i)
    # PGD one restart per call (the bar moves per restart), then the rest in one call.
    pgd_delta = pgd_by_restart(model.apply, params, state, _to_unit_range(key, xb), yb, key,
                               eps=settings.eps, alpha=settings.alpha, steps=settings.steps,
                               restarts=settings.restarts,
                               on_restart=(lambda: bar.update(1)) if progress else None)
    out = robust_flags(model, settings, params, state, xb, yb, key, pgd_delta)
    chunks.append(jax.tree.map(lambda v, keep=keep: to_host(v)[:keep], out))
  bar.close()
  merged = jax.tree.map(lambda *c: np.concatenate(c), *chunks)
  vact = {point: {node: float(v.mean()) for node, v in nodes.items()}
          for point, nodes in merged.pop('vact').items()}
  fosc = merged.pop('fosc')
  finite = merged.pop('finite')
  flags = {k: v.astype(bool) for k, v in merged.items()}
  return {
      **{f'{k}_accuracy': float(v.mean()) for k, v in flags.items()},
      'vact': vact['fgsm'], 'vact_pgd': vact['pgd'],
      'fosc_fgsm': float(fosc['fgsm'].mean()), 'fosc_pgd': float(fosc['pgd'].mean()),
      'non_finite_logits': int(np.sum(~finite)),
      'n': n, 'eps': settings.eps, 'pgd_steps': settings.steps,
      'pgd_restarts': settings.restarts, 'pgd_step_size': settings.alpha,
      'seed': seed, 'wall_time_s': time.time() - start, 'flags': flags,
  }
