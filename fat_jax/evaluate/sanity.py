"""Sanity checks of a robustness evaluation (docs/protocol.md §4.4), as pure functions of host
arrays.

Each check returns a record ``{'status': 'pass' | 'warn' | 'info' | 'skipped' |
'uninformative', 'message': str, ...numbers}``; `fat_jax.evaluate.evaluate` computes them with
every suite. A 'warn' means the evaluation (or the model) needs a closer look;
'uninformative' that the check ran but had nothing to test (no robust point left, no point
sampled), so it can neither pass nor warn: its 'reason' says why. Most follow AutoAttack's
``autoattack/checks.py`` and Carlini et al. 2019, "On evaluating adversarial robustness".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PASS, WARN, INFO, SKIPPED = 'pass', 'warn', 'info', 'skipped'
UNINFORMATIVE = 'uninformative'
BOUND_TOLERANCE = 1e-6     # float slack of ‖δ‖∞ ≤ ε and x + δ ∈ [0, 1]
L2_BOUND_TOLERANCE = 1e-5  # float slack of ‖δ‖₂ ≤ ε (a float32 sum over D pixels)
PROBABILITY_TOLERANCE = 1e-5
SQUARE_TOLERANCE = 0.002   # 0.2 percentage points, as AutoAttack's check_square_sr
SQUARE_CHECK_QUERIES = 300  # the default black-box check: a short Square after the suite
CO_GAP, CO_RATIO = 0.1, 0.5  # PGD accuracy < ½·FGSM accuracy, 0.1 below it: CO-like
SWEEP_TOLERANCE = 0.01
FROZEN_NOISE_TOLERANCE = 0.02  # one frozen draw: at most 2 points (or chance) above a reference
EOT_TOLERANCE = 0.02       # K = 100: at most 2 points (or chance) below the suite's K


def _record(ok: bool, message: str, **numbers) -> dict:
  return {'status': PASS if ok else WARN, 'message': message, **numbers}


def skipped(reason: str) -> dict:
  return {'status': SKIPPED, 'message': reason}


def uninformative(reason: str, **numbers) -> dict:
  """The record of a check that ran but had nothing to test: never a 'pass'."""
  return {'status': UNINFORMATIVE, 'message': reason, 'reason': reason, **numbers}


def check_validity(x: np.ndarray, x_adv: np.ndarray, eps: float, norm: str = 'Linf') -> dict:
  """Every adversarial example lies in the ε-ball of `norm` ('Linf': ‖δ‖∞ ≤ ε, 'L2':
  ‖δ‖₂ ≤ ε) around its point and in [0, 1], and is finite."""
  n = len(x)
  delta = (x_adv - x).reshape(n, -1).astype(np.float64)
  dist = np.sqrt((delta ** 2).sum(axis=1)) if norm == 'L2' else np.abs(delta).max(axis=1)
  flat = x_adv.reshape(n, -1)
  outside_ball = int(np.sum(dist > eps + (L2_BOUND_TOLERANCE if norm == 'L2' else
                                            BOUND_TOLERANCE)))
  outside_box = int(np.sum((flat.min(axis=1) < -BOUND_TOLERANCE)
                           | (flat.max(axis=1) > 1 + BOUND_TOLERANCE)))
  non_finite = int(np.sum(~np.isfinite(flat).all(axis=1)))
  ok = outside_ball == outside_box == non_finite == 0
  return _record(ok, 'all adversarial examples are valid' if ok else
                 f'{outside_ball} outside the ε-ball, {outside_box} outside [0, 1], '
                 f'{non_finite} not finite', norm=norm,
                 **{'max_l2' if norm == 'L2' else 'max_linf': float(dist.max(initial=0.0))},
                 eps=eps, outside_ball=outside_ball, outside_box=outside_box, non_finite=non_finite)


def check_reevaluation(recorded: np.ndarray, reevaluated: np.ndarray) -> dict:
  """A fresh forward of the final adversarial examples reproduces the recorded robust flags."""
  mismatches = int(np.sum(recorded != reevaluated))
  return _record(mismatches == 0, 'the re-evaluated flags match' if mismatches == 0 else
                 f'{mismatches} points change their flag when re-evaluated',
                 mismatches=mismatches)


def check_ordering(levels: Sequence[tuple[str, np.ndarray]]) -> dict:
  """Per point, robust flags never increase along `levels` (weakest attack first).

  A point robust to a stronger attack but not to a weaker one (e.g. FGSM breaks
  it, PGD does not) points to gradient masking or a weak strong attack.
  """
  violations = {f'{weak}>={strong}': int(np.sum(b & ~a))
                for (weak, a), (strong, b) in zip(levels[:-1], levels[1:])}
  if not any(np.any(b) for _, b in levels[1:]):
    return uninformative('no point is robust to any attack after ' + levels[0][0] + ', so no '
                         'point can break the order', violations=violations)
  bad = {k: v for k, v in violations.items() if v}
  return _record(not bad, 'per-point order ' + ' ≥ '.join(n for n, _ in levels) + ' holds'
                 if not bad else 'points robust to the stronger but not to the weaker attack: '
                 + ', '.join(f'{k}: {v}' for k, v in bad.items()), violations=violations)


def check_fgsm_pgd_gap(fgsm_accuracy: float, pgd_accuracy: float) -> dict:
  """Catastrophic overfitting's signature: FGSM accuracy far above PGD accuracy
  (PGD below `CO_RATIO` of FGSM's accuracy and more than `CO_GAP` points under it)."""
  gap = fgsm_accuracy - pgd_accuracy
  if fgsm_accuracy == 0:
    return uninformative('FGSM leaves no robust point, so PGD cannot fall below it',
                         fgsm_accuracy=fgsm_accuracy, pgd_accuracy=pgd_accuracy, gap=gap)
  co = gap > CO_GAP and pgd_accuracy < CO_RATIO * fgsm_accuracy
  return _record(not co, f'FGSM {fgsm_accuracy:.4f} vs PGD {pgd_accuracy:.4f}' + (
      ': PGD accuracy collapsed below FGSM\'s, the model looks catastrophically overfitted'
      if co else ''), fgsm_accuracy=fgsm_accuracy, pgd_accuracy=pgd_accuracy, gap=gap)


def check_square(white_box_accuracy: float, square_accuracy: float) -> dict:
  """Black-box Square must not beat the white-box attacks by more than 0.2 points; with no
  point left robust by them it has nothing to test ('uninformative')."""
  drop = white_box_accuracy - square_accuracy
  if white_box_accuracy == 0:
    return uninformative('no point is robust to the white-box attacks, so Square had none to '
                         'attack', white_box_accuracy=white_box_accuracy,
                         square_accuracy=square_accuracy, drop=drop)
  return _record(drop <= SQUARE_TOLERANCE, f'Square lowers the white-box accuracy by {drop:.4f}'
                 + ('' if drop <= SQUARE_TOLERANCE else
                    f' > {SQUARE_TOLERANCE}: the gradients are unreliable (masking?)'),
                 white_box_accuracy=white_box_accuracy, square_accuracy=square_accuracy,
                 drop=drop)


def check_gradient_free(square: dict) -> dict:
  """Whether a gradient-free attack checked the white-box result. Without one, a model whose
  input gradients are non-zero but scrambled (wrong directions) keeps a high robust accuracy
  that no gradient-based check questions; `square` is the record of `check_square`."""
  if square['status'] == UNINFORMATIVE:
    return uninformative('Square ran on no point (no point robust to the white-box attacks), '
                         'so no gradient-free attack checked them', ran=False)
  ran = square['status'] != SKIPPED
  return _record(ran, 'Square (black-box) checked the white-box result' if ran else
                 'NO gradient-free check ran: a model with masked or scrambled gradients would '
                 'pass unnoticed (evaluate a deterministic model with square_check=True or a '
                 'suite with Square)', ran=ran)


def check_eps_sweep(eps_values: Sequence[float], accuracies: Sequence[float],
                    norm: str = 'Linf') -> dict:
  """Accuracy does not rise along the increasing `eps_values` (by more than 1 point) and, in
  L∞, is ≈ 0 at ε = 1 (every image can be turned into any other). The ε = 1 rule is L∞-only:
  no fixed L2 radius guarantees 0 (‖δ‖₂ can reach √D), so in L2 only the monotonicity counts."""
  if not any(accuracies):
    return uninformative('accuracy is 0 at every ε of the sweep, so it cannot rise', norm=norm,
                         eps=[float(e) for e in eps_values],
                         accuracy=[float(a) for a in accuracies])
  pairs = list(zip(eps_values, accuracies))
  rises = [(e0, e1) for (e0, a0), (e1, a1) in zip(pairs[:-1], pairs[1:])
           if a1 > a0 + SWEEP_TOLERANCE]
  at_one = [acc for e, acc in zip(eps_values, accuracies) if e >= 1.0 and norm == 'Linf']
  high = bool(at_one) and at_one[-1] > SWEEP_TOLERANCE
  problems = ([f'accuracy rises between ε = {a:.4g} and {b:.4g}' for a, b in rises]
              + ([f'accuracy {at_one[-1]:.4f} at ε = 1 (expected ≈ 0)'] if high else []))
  return _record(not problems, '; '.join(problems) or 'accuracy falls with ε'
                 + (' and is ≈ 0 at ε = 1' if at_one else '')
                 + (' (L2: the L∞ rule "ε = 1 ⇒ 0" does not apply)' if norm == 'L2' else ''),
                 norm=norm, eps=[float(e) for e in eps_values],
                 accuracy=[float(a) for a in accuracies])


def check_more_iterations(weak: str, weak_accuracy: float, strong: str, strong_accuracy: float,
                          raised: int, attacked: int | None = None) -> dict:
  """More iterations and restarts do not raise accuracy: the `strong` attack must not end
  above the `weak` one. `raised`: points robust to the strong attack only; `attacked`: the
  points both attacks ran on (the clean-correct ones), if known."""
  if attacked == 0:
    return uninformative('no point is classified correctly, so neither attack ran on any',
                         weak_accuracy=weak_accuracy, strong_accuracy=strong_accuracy,
                         raised=raised)
  ok = strong_accuracy <= weak_accuracy
  return _record(ok, f'{weak} {weak_accuracy:.4f}, {strong} {strong_accuracy:.4f}' + (
      '' if ok else f': more iterations and restarts raised accuracy ({raised} points robust '
      'to the stronger attack only): the attack is not monotone in its effort, so its result '
      'is no reliable bound'),
                 weak_accuracy=weak_accuracy, strong_accuracy=strong_accuracy, raised=raised)


def _excess(higher: np.ndarray, lower: np.ndarray, tolerance: float) -> tuple[float, float]:
  """Mean of the paired per-point differences `higher − lower` and the margin it may reach:
  `tolerance`, or 1.96 standard errors of that mean if larger (chance at 95%)."""
  d = np.asarray(higher, np.float64) - np.asarray(lower, np.float64)
  se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
  return float(d.mean()), float(max(tolerance, 1.96 * se))


def check_frozen_noise(frozen: np.ndarray, eot: np.ndarray,
                       noise_free: np.ndarray | None = None) -> dict:
  """With one noise draw frozen the model is deterministic, and the same attacks must bring its
  accuracy down to the noise-free model's level (docs/protocol.md §4.3).

  Per-point robust scores: `frozen` (0/1, the suite's attacks on one frozen draw), `eot` (the
  suite's result, mean over fresh draws) and `noise_free` (0/1, the same attacks on the model
  without noise, when known). An attacker who knows the draw does at least as well as one who
  does not, so the frozen accuracy may exceed neither reference by more than
  `FROZEN_NOISE_TOLERANCE` and chance (paired, 95%); above it, the attacks fail on the model
  even without its randomness (gradients masked by something else).
  """
  references = {'EOT': eot} if noise_free is None else {'EOT': eot, 'noise-free': noise_free}
  excess = {name: _excess(frozen, ref, FROZEN_NOISE_TOLERANCE) for name, ref in references.items()}
  above = [f'{name} by {d:.4f} > {margin:.4f}' for name, (d, margin) in excess.items()
           if d > margin]
  message = f'one frozen draw {np.mean(frozen):.4f}, ' + ', '.join(
      f'{name} {np.mean(ref):.4f}' for name, ref in references.items())
  return _record(not above, message + ('' if not above else ': the frozen draw stays above '
                 + ' and '.join(above) + ', the attacks fail on this model even without its '
                 'randomness'), frozen_accuracy=float(np.mean(frozen)),
                 eot_accuracy=float(np.mean(eot)),
                 noise_free_accuracy=None if noise_free is None else float(np.mean(noise_free)))


def check_eot_samples(samples: int, scores: np.ndarray, check_samples: int,
                      check_scores: np.ndarray) -> dict:
  """EOT with `check_samples` (100) gradient draws must not lower the suite's accuracy
  (K = `samples`) on the same points by more than `EOT_TOLERANCE` and chance (paired, 95%);
  otherwise K is too small. `scores`, `check_scores`: per-point mean over fresh draws."""
  n = len(scores)
  if not np.any(scores):
    return uninformative(f'no point of the first {n} is robust with K = {samples}, so '
                         f'K = {check_samples} cannot lower their accuracy', n=n,
                         samples=samples, check_samples=check_samples)
  drop, margin = _excess(scores, check_scores, EOT_TOLERANCE)
  ok = drop <= margin
  accuracy, check_accuracy = float(np.mean(scores)), float(np.mean(check_scores))
  return _record(ok, f'first {n} points: K = {samples} {accuracy:.4f}, K = {check_samples} '
                 f'{check_accuracy:.4f}' + ('' if ok else f': K = {check_samples} is lower by '
                 f'{drop:.4f} > {margin:.4f}, use more EOT samples'), n=n, samples=samples,
                 accuracy=accuracy, check_samples=check_samples, check_accuracy=check_accuracy,
                 drop=drop, margin=margin)


def check_binarization(success: Sequence[bool], n_sampled: int, attacks: Sequence[str],
                       setup_failures: dict | None = None) -> dict:
  """The binarization test (Zimmermann et al. 2022, `fat_jax.evaluate.binarization`): on each
  point whose binarized model was set up an adversarial example provably exists in the ε-ball,
  so the attacks must find one on every such point (test ASR 1); each point where they do not
  is an attack failure. `success`: per set-up point; `setup_failures`: {reason: count} of the
  other sampled points. No point sampled or set up: 'uninformative'."""
  success = np.asarray(success, bool)
  setup_failures = dict(setup_failures or {})
  numbers = dict(n_sampled=n_sampled, n_tested=int(len(success)), failed=int(np.sum(~success)),
                 attack_success_rate=float(success.mean()) if len(success) else None,
                 fraction_failed=float(np.mean(~success)) if len(success) else None,
                 attacks=list(attacks), setup_failures=setup_failures)
  if not attacks:
    return uninformative('none of the attacks can attack the 2-class binarized model', **numbers)
  if not len(success):
    return uninformative('no point was sampled' if not n_sampled else
                         f'the binarized model could not be set up on any of the {n_sampled} '
                         'points (' + '; '.join(f'{k}: {v}' for k, v in setup_failures.items())
                         + ')', **numbers)
  failed = numbers['failed']
  return _record(failed == 0, f"{', '.join(attacks)} found the provable adversarial example on "
                 f'{len(success) - failed} of {len(success)} binarized points'
                 + (f' ({n_sampled - len(success)} not set up)' if n_sampled > len(success)
                    else '')
                 + ('' if not failed else f': the attacks fail on {failed} points where an '
                    'adversarial example exists, so their robust accuracy is no reliable bound'),
                 **numbers)


class NonFiniteLogitsError(FloatingPointError):
  """The model outputs NaN or inf logits on some evaluated point."""


def require_finite_logits(clean_logits: np.ndarray, adversarial_logits: np.ndarray) -> None:
  """Raise `NonFiniteLogitsError` if the logits of a point (rows of `clean_logits` at the clean
  points, of `adversarial_logits` at the suite's adversarial ones) hold NaN or inf.

  An error, not a 'warn': a NaN row's argmax is one fixed class, so every accuracy computed
  from such logits (clean, robust, each check's) counts label coincidences, and the other
  checks misread the NaN (a repeated forward "differs" by NaN and looks randomised).
  """
  clean = ~np.isfinite(clean_logits).all(axis=-1)
  adversarial = ~np.isfinite(adversarial_logits).all(axis=-1)
  bad = int(np.sum(clean | adversarial))
  if bad:
    raise NonFiniteLogitsError(
        f'the model outputs NaN/inf logits on {bad} of {len(clean)} points ({int(clean.sum())} '
        f'clean, {int(adversarial.sum())} adversarial): the weights have diverged (or its '
        'forward overflows float32), so no accuracy computed from them is valid; evaluate an '
        'earlier checkpoint.')


def check_prediction(logits: np.ndarray, labels: np.ndarray) -> dict:
  """The model does not predict one class for every clean point while the `labels` hold
  several. A constant prediction (a diverged or collapsed model) scores the share of its class
  in every accuracy, robust ones included, whatever the attack: a 'warn', since the numbers
  are computed correctly but measure the labels, not robustness."""
  predicted = np.unique(np.argmax(logits, axis=-1))
  classes = len(np.unique(labels))
  constant = len(predicted) == 1 and classes > 1
  return _record(not constant, f'predicts one class ({int(predicted[0])}) for every input '
                 f'while the labels hold {classes}: the model is degenerate (diverged or '
                 'collapsed), its accuracies are the share of that class' if constant else
                 f'predicts {len(predicted)} classes (the labels hold {classes})',
                 predicted_classes=int(len(predicted)), label_classes=classes)


def check_logits(logits: np.ndarray) -> dict:
  """The model returns logits, not probabilities (rows in [0, 1] summing to 1)."""
  tol = PROBABILITY_TOLERANCE
  probabilities = bool(logits.min() > -tol and logits.max() < 1 + tol
                       and np.all(np.abs(logits.sum(axis=-1) - 1) < tol))
  return _record(not probabilities, 'outputs look like probabilities: attack the logits'
                 if probabilities else 'outputs are logits', output_min=float(logits.min()),
                 output_max=float(logits.max()))


def check_zero_gradients(zero: np.ndarray) -> dict:
  """Share of points whose input gradient of the CE loss is exactly zero."""
  count = int(np.sum(zero))
  return _record(count == 0, f'{count} of {len(zero)} points have an exactly zero input '
                 'gradient' + (': gradient-based attacks are unreliable there' if count else ''),
                 share=count / max(len(zero), 1), count=count)


def check_determinism(max_change: float, randomized: bool,
                      draw_change: float | None = None) -> dict:
  """Repeated forwards give the same logits (for a randomised model: with the same key)
  and, for a randomised model, another draw changes them."""
  if max_change != 0:
    return _record(False, f'repeated forwards differ by up to {max_change:.3g}: the model is '
                   'randomised in a way the evaluation does not control (pass randomized=True '
                   'and an apply function taking a key)', max_change=max_change)
  if randomized and not draw_change:
    return {'status': INFO, 'message': 'randomized=True but different draws give the same '
            'logits: the model looks deterministic', 'max_change': 0.0, 'draw_change': 0.0}
  return _record(True, 'repeated forwards agree', max_change=0.0,
                 **({'draw_change': draw_change} if randomized else {}))
