"""The one calling convention of the public attacks of `fat_jax.attacks`, and their checks at
the door.

An attack takes its model in either of two forms, told apart by the number of positional
arguments after it (two at most: the plain form):

  attack(f, x, y, *, eps, key=jax.random.key(0), ...)        f(x) -> logits
  attack(apply_fn, params, state, x, y, key, *, eps, ...)    the apply form (`core`)

A plain ``f`` runs as the apply function ``(params, state, x, train) ↦ (f(x), state, {})``
(`LogitsFnApply`; params and state None, so the result's state is None): the same δ as the
apply form of the same classifier. Attacks without randomness take no key; TRADES' KL attack
takes ``(f, x, y)`` with y ignored (its apply form has no labels).

Both forms check, with the messages of `fat_jax.evaluate.evaluate`: ε a radius of the threat
model in pixel units of [0, 1] (`eps_problem`: L∞ refuses ε > 1, as 8 for 8/255; FAB, which
searches the smallest perturbation, takes any L∞ ε ≥ 0 as its success threshold) and the points
x in [0, 1] (`pixel_problem`). A value is checked only when it is concrete: inside ``jax.jit``,
``grad`` or ``vmap`` a traced ε or x passes unchecked, so the attacks run in a jitted training
step as before.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks.core import check_norm, eps_problem

PLAIN_ARGUMENTS = 2        # f, then at most (x, y) positionally: the plain form


@dataclasses.dataclass(frozen=True)
class LogitsFnApply:
  """``f(x) -> logits`` as an apply function (no parameters, no state, no features)."""
  fn: Callable

  def __call__(self, params, state, x, train):
    del params, train
    return self.fn(x), state, {}


def positional_counts(f: Callable) -> set[int] | None:
  """The numbers of positional arguments `f` can be called with among 1, 2, 4 and 5, or None
  when its signature cannot be read."""
  try:
    signature = inspect.signature(f)
  except (TypeError, ValueError):
    return None
  kinds = [p for p in signature.parameters.values()
           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  required = sum(p.default is p.empty for p in kinds)
  unbounded = any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values())
  return {k for k in (1, 2, 4, 5) if required <= k and (unbounded or k <= len(kinds))}


def pixel_problem(low: float, high: float) -> str | None:
  """Why points whose smallest and largest values are `low` and `high` are not pixels of
  [0, 1] (None if they are; NaN passes, for `evaluate` to name the points that hold it)."""
  if not (low < 0 or high > 1):
    return None
  return (f'x must be in pixel space [0, 1] (got [{low:.3g}, {high:.3g}]); '
          'normalise inside the apply function.')


def _concrete(value) -> np.ndarray | None:
  """`value` on the host, or None while it is traced (inside jit, grad or vmap)."""
  try:
    return np.asarray(value)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_attack_inputs(x, eps=None, norm: str = 'Linf', minimum_norm: bool = False) -> None:
  """Raise ValueError with one line if the threat model is unknown, or if a concrete ε
  (each value of an array) or concrete points x break `eps_problem` / `pixel_problem`; with
  `minimum_norm` an L∞ ε above 1 passes (a minimum-norm attack's threshold: every point found
  counts)."""
  if eps is not None:
    check_norm(norm)
    values = _concrete(eps)
    for value in () if values is None else np.unique(values):
      if minimum_norm and norm == 'Linf' and value > 1:
        continue
      problem = eps_problem(float(value), norm=norm)   # as `evaluate` writes it: 8.0
      if problem:
        raise ValueError(problem)
  bounds = _concrete(jnp.stack([jnp.min(x), jnp.max(x)])) if jnp.size(x) else None
  problem = None if bounds is None else pixel_problem(*map(float, bounds))
  if problem:
    raise ValueError(problem)


def _plain_model(name: str, f, kwargs: dict) -> LogitsFnApply:
  """`f` of the plain form as an apply function, refusing an apply function or a randomised
  model with one line."""
  counts = positional_counts(f)
  if counts is not None and 1 not in counts:
    raise TypeError(f'{name}(f, x, y, ...) needs f(x) -> logits, but {f!r} takes '
                    f'{inspect.signature(f)}: pass an apply function with its params, state '
                    f'(and key): {name}(apply_fn, params, state, x, y, key, ...).')
  if kwargs.get('randomized'):
    raise ValueError(f'{name}(f, x, y, randomized=True): a randomised model needs the apply '
                     'form apply_fn(params, state, x, train, key) with its params and state.')
  return LogitsFnApply(f)


def attack_convention(*, keyed: bool = True, labelled: bool = True,
                      minimum_norm: bool = False):
  """Decorate an attack written in the apply form ``attack(apply_fn, params, state, x, y[,
  key], *, ...)`` (``keyed``: it takes a key after y; not ``labelled``: ``(…, x, key)``, no
  labels) so that it also takes the plain form, and checks both (module docstring;
  `minimum_norm` as in `check_attack_inputs`)."""
  def decorate(attack):
    name, signature = attack.__name__, inspect.signature(attack)

    def check(arguments: dict) -> None:
      if 'x' in arguments:
        check_attack_inputs(arguments['x'], arguments.get('eps'),
                            arguments.get('norm', 'Linf'), minimum_norm)

    @functools.wraps(attack)
    def run(model, *args, **kwargs):
      if len(args) > PLAIN_ARGUMENTS or {'params', 'state'} & kwargs.keys():   # apply form
        try:
          check(signature.bind_partial(model, *args, **kwargs).arguments)
        except TypeError:
          pass   # a wrong call: the attack itself says what is wrong
        return attack(model, *args, **kwargs)
      points = dict(zip(('x', 'y'), args))
      points.update({k: kwargs.pop(k) for k in ('x', 'y') if k in kwargs})
      if 'x' not in points or labelled and 'y' not in points:
        raise TypeError(f'{name} needs the points and labels: {name}(f, x, y, *, ...) with '
                        'f(x) -> logits, or the apply form (apply_fn, params, state, x, y'
                        f"{', key' if keyed else ''}, ...).")
      apply_fn = _plain_model(name, model, kwargs)
      check({**kwargs, 'x': points['x']})
      key = kwargs.pop('key', None) if keyed else None
      key = jax.random.key(0) if keyed and key is None else key
      leading = (points['x'], points['y']) if labelled else (points['x'],)
      return attack(apply_fn, None, None, *leading, *((key,) if keyed else ()), **kwargs)
    return run
  return decorate
