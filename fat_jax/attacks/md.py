"""The Margin-Decomposition attacks MD and MDMT (Ma et al., "Imbalanced gradients: a subtle cause
of overestimated adversarial robustness", Machine Learning 2023), following the authors' code,
HanxunH/MDAttack at commit 3ffbf4cea7101fbb077cb47774b387417df1eaac: ``attacks/MD.py``
(``MDAttack.perturb``, ``MDMTAttack.perturb``) with the settings of ``attacks/attack_handler.py``
(N = 50 steps, change point K = 20, 1 restart; MDMT+ 10 restarts).

Per example, with z_y the true class's logit and z_o the other one (the largest other logit for
MD, a target's for MDMT), each restart runs two passes r = 0, 1 of N sign steps from
x + U(−ε, ε)^D, step i ascending

  i = 0: z_y;   1 ≤ i < K: −z_y (r = 0) or z_o (r = 1);   i ≥ K: z_o − z_y,

the margin taken apart (one term at a time) before it is attacked whole, with the steps
α_i = ε·(1 + cos(π(i − 1)/(N − K))) for i ≤ K and ε·(1 + cos(π(i − K − 1)/(N − K))) for
i > K, each projected onto the ε-ball and [0, 1]. Every iterate is checked (with the logits of
its step, and once after the last step); the attack returns the last misclassified iterate,
x where there is none. MDMT runs this once per target: the classes at positions −T, …, −1, 0 of
the clean logits sorted in ascending order (T = 9: the 9th-largest class up to the largest,
then the smallest; T = C − 1 below 10 classes). L∞ only, as the official code.
`margin_attack` is the loop (`margin_begin`, `margin_passes`, `margin_end`: several calls of
`margin_passes` give the same δ as one); the Probability Margin Attack (`fat_jax.attacks.pma`) runs
it on the softmax probabilities.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks.core import Attack, ApplyFn, check_eps
from fat_jax.attacks.eot import loss_and_grad
from fat_jax.attacks.convention import attack_convention
from fat_jax.losses.classification import assert_logits_and_labels

MD_STEPS = 50
MD_CHANGE_POINT = 20
MDMT_PLUS_RESTARTS = 10
MDMT_TARGETS = 9   # the official loop's t = 9, …, 0
MARGIN_ATTACKS = ('md', 'mdmt', 'pma')


class MarginResult(NamedTuple):
  """δ, the model state, and the forward and backward passes the batch ran (per example)."""
  delta: jax.Array
  state: object
  forwards: jax.Array
  backwards: jax.Array


class MarginCarry(NamedTuple):
  """The loop between passes: the next pass, the current and the recorded iterates, the
  examples done (PMA), the model state, the passes run, and MDMT's targets."""
  run: jax.Array
  x_pgd: jax.Array
  x_adv: jax.Array
  done: jax.Array
  state: object
  forwards: jax.Array
  backwards: jax.Array
  targets: jax.Array


def md_step_sizes(steps: int, change_point: float) -> np.ndarray:
  """α_i / ε for i < `steps`: the two cosine cycles of ``MDAttack.perturb`` (float64)."""
  i = np.arange(steps, dtype=np.float64)
  shift = np.where(i > change_point, change_point + 1.0, 1.0)
  return 1.0 + np.cos((i - shift) / (steps - change_point) * np.pi)


def md_weights(i, r, change_point):
  """(a, b) of the objective a·z_y + b·z_o that step i of pass r ascends."""
  first, decomposed = i < 1, i < change_point
  a = jnp.where(first, 1.0, jnp.where(decomposed & (r == 1), 0.0, -1.0))
  b = jnp.where(first, 0.0, jnp.where(decomposed, (r == 1).astype(jnp.float32), 1.0))
  return a, b


def largest_other(scores: jax.Array, labels: jax.Array) -> jax.Array:
  """The largest score of a class other than the label, per example."""
  masked = jnp.where(jax.nn.one_hot(labels, scores.shape[-1], dtype=bool), -jnp.inf, scores)
  return jnp.take_along_axis(scores, masked.argmax(-1)[:, None], axis=-1)[:, 0]


def mdmt_targets(logits: jax.Array) -> jax.Array:
  """(N, T + 1) targets of MDMT in the official order: ``logits.sort(dim=1)[1][:, -t]`` for
  t = T, …, 0 with T = min(9, C − 1)."""
  classes = logits.shape[-1]
  ascending = jnp.argsort(logits, axis=-1, stable=True)
  positions = [(-t) % classes for t in range(min(MDMT_TARGETS, classes - 1), -1, -1)]
  return ascending[:, jnp.asarray(positions)]


def check_margin_settings(name: str, eps, steps: int, change_point: float,
                          restarts: int) -> None:
  """Refuse a negative ε, no steps or restarts, and a change point outside [0, steps)."""
  check_eps(eps, 'Linf')
  if steps < 1 or restarts < 1 or not 0 <= change_point < steps:
    raise ValueError(f'{name} needs steps ≥ 1, 0 ≤ change_point < steps and restarts ≥ 1, got '
                     f'steps={steps}, change_point={change_point}, restarts={restarts}.')


def margin_total_passes(carry: MarginCarry, restarts: int) -> int:
  """The passes of the attack `carry` began: 2·restarts, per target for MDMT (static)."""
  return carry.targets.shape[1] * 2 * restarts


def margin_begin(kind: str, apply_fn: ApplyFn, params, state, x, y, *,
                 train: bool = False) -> MarginCarry:
  """The carry before the first pass: PMA marks the examples misclassified at x done, MDMT
  ranks its targets (`mdmt_targets`); each with one forward."""
  if kind not in MARGIN_ATTACKS:
    raise ValueError(f'Unknown margin attack {kind!r}; known: {MARGIN_ATTACKS}.')
  done, targets, forwards = jnp.zeros(len(x), bool), jnp.zeros((len(x), 1), jnp.int32), 0
  if kind != 'md':
    logits, state, _ = apply_fn(params, state, x, train)
    assert_logits_and_labels(logits, y)
    forwards = 1
    if kind == 'pma':
      done = logits.argmax(-1) != y
    else:
      targets = mdmt_targets(logits).astype(jnp.int32)
  return MarginCarry(jnp.int32(0), x, x, done, state, jnp.int32(forwards), jnp.int32(0), targets)


def margin_passes(kind: str, apply_fn: ApplyFn, params, x, y, key, carry: MarginCarry, until, *,
                  eps, steps: int, change_point: float, restarts: int,
                  train: bool = False) -> MarginCarry:
  """Passes carry.run, …, until − 1 of the margin-decomposition loop of attack `kind`.

  Pass j is r = j mod 2 from the start x + U(−ε, ε)^D (key ``fold_in(key, j)``) clipped to
  [0, 1], ascending a·s_y + b·s_o (`md_weights`) with s the logits (PMA: their softmax) and
  s_o the largest other score (MDMT: the score of target j // (2·restarts)).
  MD and MDMT: every example steps on, and its last misclassified iterate is recorded. PMA: an
  example misclassified at a checked iterate keeps it and stops; a pass starts only the others,
  and the loop ends once every example is misclassified.
  """
  freeze = kind == 'pma'
  alphas = eps * jnp.asarray(md_step_sizes(steps, change_point), jnp.float32)
  rows = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))
  scores_of = jax.nn.softmax if freeze else (lambda z: z)
  wrong_at = lambda z: scores_of(z).argmax(-1) != y
  lower, upper = x - eps, x + eps
  active = (lambda done: jnp.any(~done)) if freeze else (lambda done: jnp.bool_(True))

  def other(s, j):
    if kind != 'mdmt':
      return largest_other(s, y)
    column = jnp.take(carry.targets, j // (2 * restarts), axis=1)
    return jnp.take_along_axis(s, column[:, None], axis=-1)[:, 0]

  def run(c: MarginCarry) -> MarginCarry:
    j, r = c.run, c.run % 2
    start = jnp.clip(x + jax.random.uniform(jax.random.fold_in(key, j), x.shape, x.dtype,
                                            -eps, eps), 0.0, 1.0)
    x_pgd = jnp.where(rows(c.done), c.x_pgd, start) if freeze else start

    def step(inner):
      i, x_pgd, x_adv, done, state = inner
      a, b = md_weights(i, r, change_point)

      def objective(z):
        assert_logits_and_labels(z, y)
        s = scores_of(z.astype(jnp.float32))
        return a * jnp.take_along_axis(s, y[:, None], axis=-1)[:, 0] + b * other(s, j)
      g = loss_and_grad(apply_fn, params, state, x_pgd, objective, train=train)
      wrong = wrong_at(g.logits)
      if freeze:
        done = done | wrong
      else:
        x_adv = jnp.where(rows(wrong), x_pgd, x_adv)
      stepped = jnp.clip(jnp.clip(x_pgd + alphas[i] * jnp.sign(g.grad), lower, upper), 0.0, 1.0)
      x_pgd = jnp.where(rows(done), x_pgd, stepped) if freeze else stepped
      return i + 1, x_pgd, x_adv, done, g.state

    i, x_pgd, x_adv, done, state = jax.lax.while_loop(
        lambda inner: (inner[0] < steps) & active(inner[3]), step,
        (jnp.int32(0), x_pgd, c.x_adv, c.done, c.state))
    logits, state, _ = apply_fn(params, state, x_pgd, train)
    wrong = wrong_at(logits)
    if freeze:
      done = done | wrong
    else:
      x_adv = jnp.where(rows(wrong), x_pgd, x_adv)
    return MarginCarry(j + 1, x_pgd, x_adv, done, state, c.forwards + i + 1, c.backwards + i,
                       c.targets)

  return jax.lax.while_loop(lambda c: (c.run < until) & active(c.done), run, carry)


def margin_end(kind: str, x, carry: MarginCarry) -> MarginResult:
  """δ of attack `kind`: PMA's last iterate per example, MD's and MDMT's last misclassified
  iterate (0 where none), with the state and the passes run."""
  x_end = carry.x_pgd if kind == 'pma' else carry.x_adv
  return MarginResult(x_end - x, carry.state, carry.forwards, carry.backwards)


def margin_attack(kind: str, apply_fn: ApplyFn, params, state, x, y, key, *, eps, steps: int,
                  change_point: float, restarts: int, train: bool = False) -> MarginResult:
  """Attack `kind` ('md', 'mdmt' or 'pma') in one loop, with its pass counts."""
  check_margin_settings(f'{kind}_attack', eps, steps, change_point, restarts)
  carry = margin_begin(kind, apply_fn, params, state, x, y, train=train)
  carry = margin_passes(kind, apply_fn, params, x, y, key, carry,
                        margin_total_passes(carry, restarts), eps=eps, steps=steps,
                        change_point=change_point, restarts=restarts, train=train)
  return margin_end(kind, x, carry)


@attack_convention()
def md_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, steps: int = MD_STEPS,
              change_point: int = MD_CHANGE_POINT, restarts: int = 1,
              train: bool = False) -> Attack:
  """MD (``MDAttack``, ``use_odi=False``, ``use_dlr=False``): z_o the largest logit other than
  y; 2·`restarts` passes. Passes per example: 2·restarts·(steps + 1) forwards, 2·restarts·steps
  backwards. `train` is the BatchNorm mode (evaluation: False)."""
  result = margin_attack('md', apply_fn, params, state, x, y, key, eps=eps, steps=steps,
                         change_point=change_point, restarts=restarts, train=train)
  return Attack(result.delta, result.state)


@attack_convention()
def mdmt_attack(apply_fn: ApplyFn, params, state, x, y, key, *, eps, steps: int = MD_STEPS,
                change_point: int = MD_CHANGE_POINT, restarts: int = 1,
                train: bool = False) -> Attack:
  """MDMT (``MDMTAttack``, ``use_odi=False``): z_o the target's logit, for each target of
  `mdmt_targets` in turn 2·`restarts` passes (pass j aims at target j // (2·restarts)), the
  last misclassified iterate over all of them. Passes per example: 1 + T'·2·restarts·(steps + 1)
  forwards and T'·2·restarts·steps backwards, T' = min(10, C) targets. MDMT+ is
  `restarts` = 10."""
  result = margin_attack('mdmt', apply_fn, params, state, x, y, key, eps=eps, steps=steps,
                         change_point=change_point, restarts=restarts, train=train)
  return Attack(result.delta, result.state)
