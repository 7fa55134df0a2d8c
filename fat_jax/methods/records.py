"""The records a training method's roles pass to each other: where the step is in the run
(`Clock`), the training attack's start forward (`StartPoint`) and its output (`Adversarial`)."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax


class Clock(NamedTuple):
  """Where a step is in the run: the step (traced), the epoch length and the number of epochs."""
  step: jax.Array
  steps_per_epoch: int
  num_epochs: int

  @property
  def epoch(self):
    return self.step // self.steps_per_epoch


class StartPoint(NamedTuple):
  """The attack's forward/backward at x + η (train-mode BatchNorm by default)."""
  eta: jax.Array
  logits: jax.Array
  features: dict
  state: Any                 # BatchNorm statistics after this forward
  grad_eta: jax.Array        # ∇_η of the mean start loss
  grad_params: Any           # ∇_w of the mean start loss (None unless asked for)
  pullback: Optional[Callable]  # (logits, {tapped node}) cotangents → (∇_w, ∇_η), or None


class Adversarial(NamedTuple):
  """A training attack's output."""
  delta: jax.Array           # stop-gradient perturbation of the training point
  start: Optional[StartPoint]
  state: Any                 # BatchNorm statistics after the attack's forwards
  rows: Any                  # updated per-example state of the batch
  metrics: Any = None        # the attack's own statistics to log (a dict) or None
  clean_gradient: Any = None  # ∇_x of the CE at x itself when the attack took it (zero start)
  example_weights: Any = None  # (N,) per-example weights of the training loss (no gradient)
