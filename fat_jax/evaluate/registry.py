"""The attacks of the evaluation suites, one `AttackEntry` each in `ATTACKS`, and the suites as
lists of their names (`SUITES`). Adding an attack is one entry.

An entry runs its attack on a padded batch in one jitted call (`attack_batch`) and, for the
long ones, in pieces with a callback after each (`attack_in_pieces`: the same δ and counts,
bit for bit, see `fat_jax.evaluate.pieces`), and says where it applies: norms, randomised
models (EOT), classes needed, image sizes. The settings come from `SuiteOptions`
(AutoAttack-standard defaults, fra31/auto-attack).
"""
from __future__ import annotations

import dataclasses
import functools
import types
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks import (apgd_attack, clip_to_box, deepfool_attack, fab_attack,
                             fab_untargeted_attack, fgsm_attack, mifgsm_attack, mm_attack,
                             pgd_attack, project_l2, project_linf, square_attack)
from fat_jax.attacks.apgd import top_targets
from fat_jax.attacks.core import THREAT_MODELS, normalize_l2
from fat_jax.attacks.eot import eot_loss_and_grad, randomized_logits
from fat_jax.attacks.md import (MDMT_PLUS_RESTARTS, check_margin_settings, margin_attack,
                                margin_begin, margin_end, margin_passes, margin_total_passes)
from fat_jax.evaluate.pieces import apgd_by_chunk, pgd_by_restart, square_by_chunk
from fat_jax.losses import cross_entropy


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
  """Attack settings of a suite (AutoAttack-standard defaults), recorded with every result.

  `pgd_step_size` is a multiple of ε; `eot_samples` (K) applies to randomised
  models (aa_rand: 20); `n_draws` (M) fresh draws score each point of a
  randomised model. `apgd_restarts` and `fab_restarts` apply to APGD-CE/-DLR and
  untargeted FAB, `apgd_t_restarts` / `fab_t_restarts` to the targeted versions
  (AutoAttack's separate `apgd_targeted.n_restarts` and `fab.n_restarts` before FAB-T).
  'mm' runs MM-`mm_target_classes` with `mm_steps` iterations per target (MM-3: 3, 20);
  'mm+' runs MM+ with `apgd_steps` and `n_target_classes` (100, 9).
  'md', 'mdmt' and 'mdmt+' run `md_steps` steps with the change point `md_change_point`
  (50, 20), `md_restarts` restarts (1; 'mdmt+': 10); 'pma' `pma_steps` (100) steps with
  `pma_restarts` (4, as the authors' `main.py`) restarts.
  """
  apgd_steps: int = 100
  apgd_restarts: int = 1
  apgd_t_restarts: Optional[int] = None   # APGD-T; None = apgd_restarts (aa_plus: 1)
  apgd_rho: float = 0.75
  n_target_classes: int = 9
  fab_steps: int = 100
  fab_restarts: int = 1
  fab_t_restarts: Optional[int] = None    # FAB-T; None = fab_restarts (aa_plus: 1)
  fab_alpha_max: float = 0.1
  fab_eta: float = 1.05
  fab_beta: float = 0.9
  square_queries: int = 5000
  square_p_init: float = 0.8
  square_rescale_schedule: bool = False
  mm_steps: int = 20
  mm_target_classes: int = 3
  md_steps: int = 50
  md_change_point: int = 20
  md_restarts: int = 1
  pma_steps: int = 100
  pma_restarts: int = 4
  pgd_steps: int = 50
  pgd_restarts: int = 10
  pgd_step_size: float = 0.25
  eot_samples: int = 1
  n_draws: int = 100


class AttackCall(NamedTuple):
  """One attack on one batch: the attacked model and batch, the attack's key, ε, `rank` (a
  targeted attack aims at class number rank + 2 by the clean logits), and the settings."""
  apply_fn: Callable
  params: object
  state: object
  x: jax.Array
  y: jax.Array
  key: jax.Array
  eps: object
  rank: object
  options: SuiteOptions
  randomized: bool
  norm: str


# (δ, forward passes, backward passes), the counts per example.
Outcome = tuple[jax.Array, jax.Array, jax.Array]


@dataclasses.dataclass(frozen=True)
class AttackEntry:
  """An attack of the suites.

  `run(call) -> (δ, forwards, backwards)` traces it inside `attack_batch`'s jit, counts per
  example for the report. `pieces(call, on_piece)`, if any, gives the same outcome in
  several jitted calls, calling `on_piece(fraction done)` (or not, if None) after each: with
  a progress bar the suite runs it so, and always if `always_in_pieces`. `targeted`: one unit
  per target class (`n_target_classes`). `eot`: it attacks randomised models (EOT over
  `eot_samples` draws). `norms`: the threat models it runs in. `min_classes`: classes its
  loss needs. `input_problem(x, norm)`: why it cannot attack `x`, or None.
  """
  run: Callable[[AttackCall], Outcome]
  pieces: Optional[Callable[[AttackCall, Optional[Callable[[float], None]]], Outcome]] = None
  always_in_pieces: bool = False
  targeted: bool = False
  eot: bool = False
  norms: tuple[str, ...] = THREAT_MODELS
  min_classes: int = 2
  input_problem: Optional[Callable[[np.ndarray, str], Optional[str]]] = None


def _per(c: AttackCall, forwards, backwards):
  """Counts of every example of the batch, as int32 arrays."""
  n = len(c.x)
  return jnp.full((n,), forwards, jnp.int32), jnp.full((n,), backwards, jnp.int32)


def _classes(c: AttackCall) -> int:
  return jax.eval_shape(lambda: c.apply_fn(c.params, c.state, c.x, False))[0].shape[-1]


def _fgsm(c: AttackCall) -> Outcome:
  """One step of ε: δ = box(ε·sign ∇) in L∞, box(ε·∇/‖∇‖₂) (FGM) in L2; on a randomised
  model along the EOT gradient of K draws."""
  if c.randomized:
    k = c.options.eot_samples
    g = eot_loss_and_grad(c.apply_fn, c.params, c.state, c.x, lambda z: cross_entropy(z, c.y),
                          c.key, samples=k)
    step = (project_l2(c.eps * normalize_l2(g.grad), c.eps) if c.norm == 'L2' else
            project_linf(c.eps * jnp.sign(g.grad), c.eps))
    return (clip_to_box(c.x, step), *_per(c, k, k))
  if c.norm == 'L2':
    delta = pgd_attack(c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=c.eps, alpha=c.eps,
                       steps=1, init='zero', freeze_misclassified=False, norm='L2').delta
  else:
    delta = fgsm_attack(c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=c.eps, alpha=c.eps,
                        train=False).delta
  return (delta, *_per(c, 1, 1))


def _pgd_counts(c: AttackCall):
  """restarts·steps passes each way, plus one forward per restart choosing the best."""
  o = c.options
  runs = o.pgd_restarts * o.pgd_steps
  return _per(c, runs + (o.pgd_restarts if o.pgd_restarts > 1 else 0), runs)


def _pgd(c: AttackCall, *, loss: str) -> Outcome:
  """PGD-`pgd_steps`-`pgd_restarts`, step `pgd_step_size`·ε, on `loss` (evaluation mode)."""
  o = c.options
  delta = pgd_attack(c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=c.eps,
                     alpha=o.pgd_step_size * c.eps, steps=o.pgd_steps, restarts=o.pgd_restarts,
                     loss=loss, norm=c.norm).delta
  return (delta, *_pgd_counts(c))


def _pgd_pieces(c: AttackCall, on_piece, *, loss: str) -> Outcome:
  """`_pgd`, one jitted call per restart (`pgd_by_restart`)."""
  o = c.options
  eps = jnp.asarray(c.eps, jnp.float32)   # α = step·ε in float32, as inside `attack_batch`
  done = [0]

  def on_restart():
    done[0] += 1
    on_piece(done[0] / o.pgd_restarts)
  delta = pgd_by_restart(c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=eps,
                         alpha=o.pgd_step_size * eps, steps=o.pgd_steps,
                         restarts=o.pgd_restarts, loss=loss, norm=c.norm,
                         on_restart=None if on_piece is None else on_restart)
  return (delta, *_pgd_counts(c))


def _mifgsm(c: AttackCall) -> Outcome:
  """MI-FGSM (Dong et al. 2018): μ = 1, 10 steps of ε/10."""
  steps = 10
  delta = mifgsm_attack(c.apply_fn, c.params, c.state, c.x, c.y, eps=c.eps, steps=steps).delta
  return (delta, *_per(c, steps, steps))


def _deepfool(c: AttackCall) -> Outcome:
  """The minimal L∞ perturbation (Moosavi-Dezfooli et al. 2016), projected onto the ε-ball
  and the box before it is scored: beyond ε it is no valid ε-attack."""
  result = deepfool_attack(c.apply_fn, c.params, c.state, c.x, c.y, norm='linf')
  delta = clip_to_box(c.x, project_linf(result.delta, c.eps))
  return delta, result.steps + 1, result.steps * _classes(c)


@functools.partial(jax.jit, static_argnames=('apply_fn', 'randomized', 'n_target_classes'))
def _target(params, state, x, key, rank, *, apply_fn, randomized: bool, n_target_classes: int):
  """Class number rank + 2 by the clean logits: the target of a targeted attack's unit."""
  logits, _ = randomized_logits(apply_fn, params, state, x, key, randomized=randomized)
  return jnp.take(top_targets(logits, n_target_classes), rank, axis=1)


def _call_target(c: AttackCall):
  return _target(c.params, c.state, c.x, c.key, c.rank, apply_fn=c.apply_fn,
                 randomized=c.randomized, n_target_classes=c.options.n_target_classes)


class _APGDUnit(NamedTuple):
  """One unit of an APGD attack: its target (APGD-T) or None, restarts, EOT samples, and the
  forward and backward passes it costs per example."""
  target: Optional[jax.Array]
  restarts: int
  eot_samples: int
  forwards: int
  backwards: int


def _apgd_unit(c: AttackCall, targeted: bool) -> _APGDUnit:
  """`_APGDUnit` of an APGD attack: restarts·(steps + 1)·K passes each way, plus the clean
  forward and, for APGD-T, the one that ranks the target (rank + 2 by the clean logits)."""
  o = c.options
  k = o.eot_samples if c.randomized else 1
  restarts = (o.apgd_t_restarts or o.apgd_restarts) if targeted else o.apgd_restarts
  runs = restarts * (o.apgd_steps + 1) * k
  if not targeted:
    return _APGDUnit(None, restarts, k, 1 + runs, runs)
  return _APGDUnit(_call_target(c), restarts, k, 2 + runs, runs)


def _apgd(c: AttackCall, *, loss: str, targeted: bool = False) -> Outcome:
  """APGD on `loss` (Croce & Hein 2020), `apgd_steps` steps, with EOT on randomised models."""
  o, unit = c.options, _apgd_unit(c, targeted)
  delta = apgd_attack(c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=c.eps,
                      steps=o.apgd_steps, restarts=unit.restarts, loss=loss, target=unit.target,
                      rho=o.apgd_rho, randomized=c.randomized, eot_samples=unit.eot_samples,
                      norm=c.norm).delta
  return (delta, *_per(c, unit.forwards, unit.backwards))


def _apgd_pieces(c: AttackCall, on_piece, *, loss: str, targeted: bool = False) -> Outcome:
  """`_apgd`, a chunk of iterations per jitted call (`apgd_by_chunk`)."""
  o, unit = c.options, _apgd_unit(c, targeted)
  delta = apgd_by_chunk(
      c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=jnp.asarray(c.eps, jnp.float32),
      steps=o.apgd_steps, restarts=unit.restarts, loss=loss, target=unit.target, rho=o.apgd_rho,
      norm=c.norm, randomized=c.randomized, eot_samples=unit.eot_samples,
      on_chunk=None if on_piece is None else (
          lambda done: on_piece(done / (unit.restarts * o.apgd_steps))))
  return (delta, *_per(c, unit.forwards, unit.backwards))


def _mm(c: AttackCall, *, plus: bool = False) -> Outcome:
  """The Minimum-Margin attack (Gao et al. 2022): MM-`mm_target_classes` with `mm_steps`
  iterations per target, or MM+ (`plus`) with APGD-T's `n_target_classes` and `apgd_steps`;
  at most C − 1 targets."""
  o = c.options
  steps = o.apgd_steps if plus else o.mm_steps
  k = min(o.n_target_classes if plus else o.mm_target_classes, _classes(c) - 1)
  delta = mm_attack(c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=c.eps, steps=steps,
                    n_target_classes=k, rho=o.apgd_rho, norm=c.norm).delta
  runs = k * (steps + 1)
  return (delta, *_per(c, 1 + runs, runs))


def _margin_settings(c: AttackCall, kind: str, restarts: Optional[int]) -> dict:
  """MD and MDMT: `md_steps`, `md_change_point`, `restarts` or `md_restarts`; PMA:
  `pma_steps`, change point steps/2, `pma_restarts`."""
  o = c.options
  if kind == 'pma':
    return dict(steps=o.pma_steps, change_point=o.pma_steps / 2, restarts=o.pma_restarts)
  return dict(steps=o.md_steps, change_point=o.md_change_point,
              restarts=restarts or o.md_restarts)


def _margin(c: AttackCall, *, kind: str, restarts: Optional[int] = None) -> Outcome:
  """MD, MDMT (Ma et al. 2023) or PMA (Xie et al. 2024); the counts are the passes the batch
  ran (PMA stops once every point is fooled)."""
  r = margin_attack(kind, c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=c.eps,
                    **_margin_settings(c, kind, restarts))
  return (r.delta, *_per(c, r.forwards, r.backwards))


@functools.partial(jax.jit, static_argnames=('apply_fn', 'kind'))
def _margin_begin(params, state, x, y, *, apply_fn, kind: str):
  return margin_begin(kind, apply_fn, params, state, x, y)


@functools.partial(jax.jit, static_argnames=('apply_fn', 'kind', 'steps', 'change_point',
                                             'restarts'))
def _margin_passes(params, x, y, key, eps, carry, until, *, apply_fn, kind: str, steps: int,
                   change_point: float, restarts: int):
  return margin_passes(kind, apply_fn, params, x, y, key, carry, until, eps=eps, steps=steps,
                       change_point=change_point, restarts=restarts)


def _margin_pieces(c: AttackCall, on_piece, *, kind: str,
                   restarts: Optional[int] = None) -> Outcome:
  """`_margin`, one jitted call per target (MDMT) or per pass (MD, PMA)."""
  settings = _margin_settings(c, kind, restarts)
  check_margin_settings(f'{kind}_attack', c.eps, **settings)
  carry = _margin_begin(c.params, c.state, c.x, c.y, apply_fn=c.apply_fn, kind=kind)
  total = margin_total_passes(carry, settings['restarts'])
  per_piece = 2 * settings['restarts'] if kind == 'mdmt' else 1
  eps = jnp.asarray(c.eps, jnp.float32)
  for until in range(per_piece, total + 1, per_piece):
    carry = _margin_passes(c.params, c.x, c.y, c.key, eps, carry, until, apply_fn=c.apply_fn,
                           kind=kind, **settings)
    if on_piece is not None:
      carry.x_adv.block_until_ready()
      on_piece(until / total)
  r = margin_end(kind, c.x, carry)
  return (r.delta, *_per(c, r.forwards, r.backwards))


def _margin_entry(kind: str, restarts: Optional[int] = None) -> AttackEntry:
  kw = dict(kind=kind, restarts=restarts)
  return AttackEntry(functools.partial(_margin, **kw), functools.partial(_margin_pieces, **kw),
                     norms=('Linf',))


def _fab_settings(c: AttackCall) -> dict:
  o = c.options
  return dict(steps=o.fab_steps, alpha_max=o.fab_alpha_max, eta=o.fab_eta, beta=o.fab_beta,
              norm=c.norm)


def _fab_t(c: AttackCall) -> Outcome:
  """FAB-T (Croce & Hein 2020): the target's forward, the clean one, 2 per step."""
  o = c.options
  restarts = o.fab_t_restarts or o.fab_restarts
  delta = fab_attack(c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=c.eps,
                     target=_call_target(c), restarts=restarts, **_fab_settings(c)).delta
  runs = restarts * o.fab_steps
  return (delta, *_per(c, 2 + 2 * runs, runs))


def _fab(c: AttackCall) -> Outcome:
  """Untargeted FAB: each step linearises every class (one backward per class)."""
  o = c.options
  delta = fab_untargeted_attack(c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=c.eps,
                                restarts=o.fab_restarts, **_fab_settings(c)).delta
  runs = o.fab_restarts * o.fab_steps
  return (delta, *_per(c, 1 + 2 * runs, _classes(c) * runs))


def _square_counts(result):
  """(δ, forwards, backwards) of a Square run: the start's forward and one per query."""
  return result.delta, 1 + result.queries, jnp.zeros_like(result.queries)


def _square(c: AttackCall) -> Outcome:
  """Square (Andriushchenko et al. 2020), `square_queries` queries, no gradients."""
  o = c.options
  return _square_counts(square_attack(
      c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=c.eps, queries=o.square_queries,
      p_init=o.square_p_init, rescale_schedule=o.square_rescale_schedule, norm=c.norm))


def _square_pieces(c: AttackCall, on_piece) -> Outcome:
  """`_square`, a chunk of queries per jitted call (`square_by_chunk`)."""
  o = c.options
  return _square_counts(square_by_chunk(
      c.apply_fn, c.params, c.state, c.x, c.y, c.key, eps=jnp.asarray(c.eps, jnp.float32),
      queries=o.square_queries, p_init=o.square_p_init,
      rescale_schedule=o.square_rescale_schedule, norm=c.norm,
      on_chunk=None if on_piece is None else (lambda done: on_piece(done / o.square_queries))))


def square_fits(x: np.ndarray, norm: str) -> bool:
  """Whether Square can attack `x` in `norm`: its L2 start needs images of at least 5 × 5."""
  return norm != 'L2' or (x.ndim >= 3 and min(x.shape[1], x.shape[2]) >= 5)


def _square_problem(x: np.ndarray, norm: str) -> Optional[str]:
  if square_fits(x, norm):
    return None
  return (f'Square L2 needs images (N, H, W[, C]) of at least 5 × 5 pixels, got x of shape '
          f"{x.shape}: drop 'square' (suite='custom') or use norm='Linf'.")


def _apgd_entry(loss: str, targeted: bool = False, min_classes: int = 2) -> AttackEntry:
  kw = dict(loss=loss, targeted=targeted)
  return AttackEntry(functools.partial(_apgd, **kw), functools.partial(_apgd_pieces, **kw),
                     targeted=targeted, eot=True, min_classes=min_classes)


def _pgd_entry(loss: str) -> AttackEntry:
  return AttackEntry(functools.partial(_pgd, loss=loss),
                     functools.partial(_pgd_pieces, loss=loss), always_in_pieces=True)


ATTACKS = types.MappingProxyType({
    'fgsm': AttackEntry(_fgsm, eot=True),
    'pgd': _pgd_entry('ce'),
    'pgd_margin': _pgd_entry('margin'),   # the C&W margin loss
    'mifgsm': AttackEntry(_mifgsm, norms=('Linf',)),       # sign steps
    'deepfool': AttackEntry(_deepfool, norms=('Linf',)),   # the L∞ DeepFool
    'apgd-ce': _apgd_entry('ce'),
    'apgd-dlr': _apgd_entry('dlr', min_classes=3),
    'apgd-t': _apgd_entry('dlr_targeted', targeted=True, min_classes=4),
    'fab': AttackEntry(_fab),
    'fab-t': AttackEntry(_fab_t, targeted=True, min_classes=4),
    'square': AttackEntry(_square, _square_pieces, input_problem=_square_problem),
    'mm': AttackEntry(_mm),                                   # MM-3
    'mm+': AttackEntry(functools.partial(_mm, plus=True)),    # MM+
    'md': _margin_entry('md'),   # Margin Decomposition (Ma et al. 2023)
    'mdmt': _margin_entry('mdmt'),
    'mdmt+': _margin_entry('mdmt', MDMT_PLUS_RESTARTS),
    'pma': _margin_entry('pma'),   # Probability Margin Attack (Xie et al. 2024)
})
EOT_ATTACKS = tuple(name for name, entry in ATTACKS.items() if entry.eot)  # randomised models
# Names refused with the reason and what to use instead.
REFUSED_ATTACKS = types.MappingProxyType({
    'cw': "'cw' was PGD on the C&W margin loss; it is now 'pgd_margin' (the C&W-L2 optimisation "
          "attack is fat_jax.attacks.cw_l2_attack)",
    'cw_l2': "'cw_l2' (Carlini & Wagner's L2 attack) minimises the L2 distance without a "
             "radius, so it is no ε-bounded suite attack; call fat_jax.attacks.cw_l2_attack "
             "directly (docs/lecture_systems.md), or use 'pgd_margin' for the margin loss "
             "within the ε-ball",
})
SUITES = {
    'aa_standard': ('apgd-ce', 'apgd-t', 'fab-t', 'square'),
    'aa_plus': ('apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t'),
    'aa_rand': ('apgd-ce', 'apgd-dlr'),
    'pgd': ('pgd',),
    'mm': ('mm',),      # MM-3 (Gao et al. 2022)
    'mm+': ('mm+',),    # MM+
    'md': ('md',),      # MD, MDMT, MDMT+ and the ensemble MDE (Ma et al. 2023)
    'mdmt': ('mdmt',),
    'mdmt+': ('mdmt+',),
    'mde': ('apgd-ce', 'md', 'mdmt', 'fab-t'),
    'pma': ('pma',),    # PMA and PMA+ (Xie et al. 2024)
    'pma+': ('pma', 'apgd-t'),
    'transfer': ('apgd-ce',),   # default attacks on the surrogate; `attacks=` overrides
    'custom': (),               # `attacks=` is the list
}


def attack_entry(name: str) -> AttackEntry:
  """The entry of attack `name`."""
  if name not in ATTACKS:
    raise ValueError(f'Unknown attack {name!r}; known: {tuple(ATTACKS)}.')
  return ATTACKS[name]


@functools.partial(jax.jit, static_argnames=('apply_fn', 'name', 'options', 'randomized',
                                             'norm'))
def attack_batch(params, state, x, y, key, eps, rank, *, apply_fn, name: str,
                 options: SuiteOptions, randomized: bool = False, norm: str = 'Linf'):
  """(δ, forwards, backwards) of attack `name` in the `norm` ball on a batch, counts per
  example, in one jitted call.

  `rank` picks the target of a targeted attack: class number rank + 2 by the
  clean logits. Evaluation mode (BatchNorm running statistics) throughout. 'fgsm' in
  L2 is the one normalised-gradient step δ = box(ε·∇/‖∇‖₂) (FGM).
  """
  call = AttackCall(apply_fn, params, state, x, y, key, eps, rank, options, randomized, norm)
  return attack_entry(name).run(call)


def attack_in_pieces(params, state, x, y, key, eps, rank, *, apply_fn, name: str,
                     options: SuiteOptions, randomized: bool = False, norm: str = 'Linf',
                     on_piece: Callable[[float], None] | None = None):
  """`attack_batch` of an attack with `pieces` (the same δ and counts), several jitted calls,
  calling `on_piece(fraction done)` after each."""
  pieces = attack_entry(name).pieces
  if pieces is None:
    raise ValueError(f'Attack {name!r} runs in one call; in pieces: '
                     f'{tuple(n for n, e in ATTACKS.items() if e.pieces)}.')
  call = AttackCall(apply_fn, params, state, x, y, key, eps, rank, options, randomized, norm)
  return pieces(call, on_piece)
