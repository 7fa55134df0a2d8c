"""Catastrophic-overfitting diagnostics (docs/protocol.md §3)."""
from __future__ import annotations

from typing import Sequence


def co_onset(history: Sequence[dict], *, drop: float = 0.2, gap: float = 0.2):
  """The first epoch at which catastrophic overfitting is seen, or None.

  CO at epoch e: PGD accuracy fell more than `drop` below the best PGD accuracy
  of the epochs before e (Wong et al.'s collapse rule, against the best rather
  than only the previous check, so a collapse spread over a few epochs is
  caught) while FGSM accuracy stays at least `gap` above PGD accuracy (the
  single-step attack no longer finds the adversarial examples PGD finds).
  Each history entry needs 'epoch', 'pgd_accuracy' and 'fgsm_accuracy'.
  """
  best = None
  for record in history:
    pgd, fgsm = record['pgd_accuracy'], record['fgsm_accuracy']
    if best is not None and pgd < best - drop and fgsm - pgd > gap:
      return record['epoch']
    best = pgd if best is None else max(best, pgd)
  return None


def co_from_start(history: Sequence[dict], *, drop: float = 0.2, gap: float = 0.2) -> bool:
  """Catastrophic overfitting from the first point on, which `co_onset` cannot see: PGD
  accuracy never rose above `drop` (so it never fell by `drop` below its best), while at the
  last point FGSM accuracy exceeds it by more than `gap` (the single-step attack no longer finds
  the adversarial examples PGD finds). Entries as for `co_onset`; False for an empty history.
  """
  if not history:
    return False
  last = history[-1]
  return (max(r['pgd_accuracy'] for r in history) <= drop
          and last['fgsm_accuracy'] - last['pgd_accuracy'] > gap)
