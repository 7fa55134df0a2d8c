"""Backward Pass Differentiable Approximation (BPDA; Athalye, Carlini & Wagner, ICML 2018,
"Obfuscated Gradients Give a False Sense of Security", §4.1).

A defence g(x) in front of a classifier f whose gradient is zero or undefined
(quantisation, JPEG, denoisers with argmax steps) masks the gradient of f∘g.
BPDA keeps the true forward f(g(x)) and back-propagates through a differentiable
approximation ĝ ≈ g instead (the identity when g(x) ≈ x):

    forward  g(x),      backward  ∂ĝ(x)ᵀ·v.

`with_preprocessing(apply_fn, bpda(g))` is an apply function like any other, so
every gradient attack and `fat_jax.evaluate.evaluate` run on it unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from fat_jax.attacks.core import ApplyFn


def bpda(forward_fn: Callable, approx_fn: Callable = lambda x: x) -> Callable:
  """x ↦ forward_fn(x) whose vector-Jacobian product is that of `approx_fn` at x.

  `approx_fn` must return the shape and dtype of `forward_fn`.
  """
  @jax.custom_vjp
  def preprocess(x):
    return forward_fn(x)

  def forward(x):
    return forward_fn(x), x

  def backward(x, cotangent):
    _, vjp = jax.vjp(approx_fn, x)
    return vjp(cotangent)

  preprocess.defvjp(forward, backward)
  return preprocess


@dataclasses.dataclass(frozen=True)
class Preprocessed:
  """The apply function of f(g(x)): `preprocess` g in front of `apply_fn` f. Hashable (a
  static jit argument)."""
  apply_fn: ApplyFn
  preprocess: Callable

  def __call__(self, params, state, x, train):
    return self.apply_fn(params, state, self.preprocess(x), train)


def with_preprocessing(apply_fn: ApplyFn, preprocess: Callable) -> Preprocessed:
  """``(params, state, x, train) -> apply_fn(params, state, preprocess(x), train)``."""
  return Preprocessed(apply_fn, preprocess)
