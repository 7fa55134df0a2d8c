"""The model an evaluation attacks or scores, and the adapters that make one from a plain
logits function.

Every evaluation runs ``apply_fn(params, state, x, train) -> (logits, new_state, features)``
(a `fat_jax.models.Model.apply`; with ``train=False``, BatchNorm running statistics), or for a
randomised model ``apply_fn(params, state, x, train, key)``. A model written as
``f(x) -> logits`` or ``f(params, x) -> logits`` becomes one with `from_logits_fn` /
`from_params_fn`; `evaluate` applies them itself when the signature says which one it is.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, NamedTuple

import jax

from fat_jax.attacks.convention import LogitsFnApply, positional_counts

ACCEPTED_SIGNATURES = (
    '  apply_fn(params, state, x, train) -> (logits, new_state, features)   '
    '(randomized=True: apply_fn(params, state, x, train, key))\n'
    '  f(x) -> logits                  evaluate(f, x=x, y=y, ...) or from_logits_fn(f)\n'
    '  f(params, x) -> logits          evaluate(f, params, x=x, y=y, ...) or '
    'from_params_fn(f, params)\n'
    '  Classifier(apply_fn, params, state, randomized)')


class Classifier(NamedTuple):
  """A model to attack or score: ``apply_fn(params, state, x, train[, key])``."""
  apply_fn: Callable
  params: object
  state: object
  randomized: bool = False


@dataclasses.dataclass(frozen=True)
class _ParamsFnApply:
  """``f(params, x) -> logits`` as an apply function (no state, no features)."""
  fn: Callable

  def __call__(self, params, state, x, train):
    del train
    return self.fn(params, x), state, {}


def from_logits_fn(f: Callable[..., object]) -> Classifier:
  """The deterministic classifier ``x ↦ f(x)`` (logits; x in [0, 1], any normalisation inside
  f). Equal `f` give equal classifiers, so repeated evaluations reuse their compilations."""
  return Classifier(LogitsFnApply(f), None, None)


def from_params_fn(f: Callable[..., object], params) -> Classifier:
  """The deterministic classifier ``x ↦ f(params, x)`` (logits), e.g. a Flax
  ``lambda p, x: module.apply(p, x)`` with its variables."""
  return Classifier(_ParamsFnApply(f), params, None)


def _wrong_shape(f, why: str) -> TypeError:
  name = getattr(f, '__name__', type(f).__name__)
  return TypeError(f'evaluate cannot use {name!r}: {why}. Accepted models:\n'
                   f'{ACCEPTED_SIGNATURES}')


def as_classifier(model, params=None, state=None, randomized: bool = False) -> Classifier:
  """`model` as a `Classifier`: a `Classifier` as it is, else a callable of one of the shapes in
  `ACCEPTED_SIGNATURES`, told apart by the numbers of positional arguments it takes and by
  which of `params` / `state` are given. A signature that cannot be read, or that fits the
  apply function and another shape (``*args``), counts as an apply function."""
  if isinstance(model, Classifier):
    if params is not None or state is not None:
      raise ValueError('A Classifier carries its own params and state: call evaluate(classifier, '
                       'x=x, y=y, ...) without them.')
    if randomized and not model.randomized:
      raise ValueError('randomized=True with a deterministic Classifier: build it as '
                       'Classifier(apply_fn, params, state, randomized=True).')
    return model
  if not callable(model):
    raise _wrong_shape(model, 'it is not callable')
  counts = positional_counts(model)
  if counts is None:
    return Classifier(model, params, state, randomized)
  fits_apply = (5 if randomized else 4) in counts
  logits_fn = not randomized and params is None and state is None and 1 in counts
  params_fn = not randomized and params is not None and state is None and 2 in counts
  if fits_apply:
    return Classifier(model, params, state, randomized)
  if logits_fn:
    return from_logits_fn(model)
  if params_fn:
    return from_params_fn(model, params)
  given = [n for n, v in (('params', params), ('state', state)) if v is not None]
  raise _wrong_shape(model, f"its signature is {inspect.signature(model)}, with "
                     f"{' and '.join(given) or 'neither params nor state'} given"
                     f"{' and randomized=True' if randomized else ''}")


def count_classes(model: Classifier, x, key) -> int:
  """C of the model's logits on one point of `x`, checking the apply function's output
  ``(logits (1, C), new_state, features)`` abstractly (nothing is computed)."""
  extra = (key,) if model.randomized else ()
  out = jax.eval_shape(lambda: model.apply_fn(model.params, model.state, x[:1], False, *extra))
  if not (isinstance(out, (tuple, list)) and len(out) == 3 and getattr(out[0], 'ndim', 0) == 2
          and out[0].shape[0] == 1):
    raise _wrong_shape(model.apply_fn, f'for one point it returned {out}, not '
                       '(logits of shape (1, C), new_state, features)')
  return int(out[0].shape[-1])
