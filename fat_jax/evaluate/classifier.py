"""The model an evaluation attacks or scores."""
from __future__ import annotations

from typing import Callable, NamedTuple


class Classifier(NamedTuple):
  """A model to attack or score: ``apply_fn(params, state, x, train[, key])``."""
  apply_fn: Callable
  params: object
  state: object
  randomized: bool = False
