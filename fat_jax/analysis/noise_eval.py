"""Inference noise ("attack obfuscation", docs/protocol.md §2.4) evaluated non-adaptively and
adaptively.

The feature-difference paper (Zhao et al., ECCV 2024) predicts with f(x + r),
r ~ U(−a, a) (a = 16/255 best) or N(0, σ²), and supports its robustness claim
with adversarial examples computed on the noise-free model. `evaluate_input_noise`
reports that protocol next to the ones a randomised defence must pass
(docs/protocol.md §4.3):

| row | model scored | attack computed on |
|---|---|---|
| noise-free | f | f (white-box) |
| non-adaptive | f(x + r), M fresh draws | f (the paper's protocol: `evaluate`'s 'transfer' suite) |
| adaptive (EOT) | f(x + r), M fresh draws | f(x + r), gradients averaged over K draws ('aa_rand') |

The same attacks (APGD-CE, APGD-DLR by default, AutoAttack-rand's) run in all
three rows, so the only difference between the last two is whether the attack
sees the noise.
"""
from __future__ import annotations

import logging

from fat_jax.attacks.eot import with_input_noise
from fat_jax.evaluate import SUITES, evaluate
from fat_jax.methods import evaluated_weights
from fat_jax.run import run_log
from fat_jax.run.runs import Run

log = logging.getLogger('fat_jax')

SUITE = 'noise'                  # its report sits beside the attack suites' eval_<suite>.json
REPORT = f'eval_{SUITE}.json'


def evaluate_input_noise(apply_fn, params, state, x, y, *, eps: float, scale: float,
                         kind: str = 'uniform', clip: bool = False,
                         attacks=SUITES['aa_rand'], eot_samples: int = 20, seed: int = 0,
                         **evaluate_kwargs) -> dict:
  """The three rows of the module doc for f(x + r), r of `kind` with `scale`.

  `apply_fn(params, state, x, train)` is the noise-free model; `attacks` are
  names of `fat_jax.evaluate.ATTACKS` usable with EOT; `eot_samples` is K of
  the adaptive row; `evaluate_kwargs` go to every `evaluate` call (n_draws,
  apgd_steps, batch_size, checks, ...). Returns {'noise_free', 'non_adaptive',
  'adaptive': the `evaluate` reports without per-point arrays, 'table': str}.
  """
  noisy = with_input_noise(apply_fn, scale, kind, clip)
  common = dict(eps=eps, seed=seed, attacks=tuple(attacks), **evaluate_kwargs)
  reports = {
      'noise_free': evaluate(apply_fn, params, state, x, y, suite='custom', **common),
      'non_adaptive': evaluate(noisy, params, state, x, y, suite='transfer', randomized=True,
                               surrogate=(apply_fn, params, state), **common),
      'adaptive': evaluate(noisy, params, state, x, y, suite='custom', randomized=True,
                           eot_samples=eot_samples, **common),
  }
  reports = {k: {f: v for f, v in r.items() if f not in ('flags', 'scores', 'x_adv')}
             for k, r in reports.items()}
  noise = {'scale': float(scale), 'kind': kind, 'clip': bool(clip)}
  return {**reports, 'noise': noise, 'table': format_noise_table(reports, noise)}


def format_noise_table(reports: dict, noise: dict) -> str:
  """Markdown rows: clean and robust accuracy (95% interval and majority vote for f(x + r))."""
  r = f"a = {noise['scale']:.4g}" if noise['kind'] == 'uniform' else f"σ = {noise['scale']:.4g}"
  labels = {'noise_free': ('f(x)', 'white-box on f'),
            'non_adaptive': (f'f(x + r), {r}', 'computed on f (non-adaptive)'),
            'adaptive': (f'f(x + r), {r}', f"on f(x + r), EOT K = "
                         f"{reports['adaptive']['settings']['eot_samples']} (adaptive)")}
  lines = ['| model | attack | clean | robust | robust 95% | robust (majority vote) |',
           '|---|---|---:|---:|---|---:|']
  for key, (model, attack) in labels.items():
    rep = reports[key]
    interval = ('–' if not rep['randomized'] else
                '[{:.3f}, {:.3f}]'.format(*rep['robust_accuracy_ci95']))
    vote = f"{rep['robust_majority_accuracy']:.3f}" if rep['randomized'] else '–'
    lines.append(f"| {model} | {attack} | {rep['clean_accuracy']:.3f} | "
                 f"{rep['robust_accuracy']:.3f} | {interval} | {vote} |")
  return '\n'.join(lines)


def evaluate_noise_run(run: Run) -> dict:
  """`evaluate_input_noise` on a checkpoint of `run` (``launch.py --mode=noise_eval``): noise
  `eval.input_noise` (`eval.noise_kind`, `eval.noise_clip`; required > 0), attacks
  `eval.attacks` (default APGD-CE, APGD-DLR), K = `eval.eot_samples` (None: 20), first `eval.n`
  test points, ε = `eval.eps` (None: the training ε). Writes ``eval_noise.json``."""
  config = run.config
  e = config.eval
  if not e.input_noise > 0:
    raise ValueError('--mode=noise_eval needs the noise scale: --config.eval.input_noise=a '
                     '(e.g. 16/255 = 0.0627 for r ~ U(−a, a)).')
  model, ts, epoch = run.restore(e.epoch)
  weights, params = evaluated_weights(ts)
  x, y = run.points('test', e.n)
  report = evaluate_input_noise(
      model.apply, params, ts.batch_stats, x, y, eps=run.eval_eps,
      scale=e.input_noise, kind=e.noise_kind, clip=e.noise_clip,
      attacks=tuple(e.attacks) or SUITES['aa_rand'],
      eot_samples=e.eot_samples if e.eot_samples is not None else 20, seed=config.seed,
      n_draws=e.n_draws, apgd_steps=e.apgd_steps, apgd_restarts=e.apgd_restarts or 1,
      batch_size=e.batch_size, checks=e.checks, progress=config.progress)
  report.update(evaluated_epoch=epoch, evaluated_weights=weights, method=config.method.name,
                dataset=config.data.name, model=config.model.name, workdir=run.workdir)
  run_log.write_json(run.workdir, REPORT, report)
  log.info('Inference noise (epoch %d, n = %d):\n%s', epoch, len(y), report['table'])
  return report
