"""Run reports: ``python -m fat_jax.reports.report WORKDIR [WORKDIR ...] [--out DIR]``.

Writes ``report.md`` and its PNG figures into one folder (default
``WORKDIR/report`` for one run, ``<common parent>/report`` for several), so the
folder is self-contained. Sections:

* Runs — the `fat_jax.reports.aggregate` table and each run's settings;
* Accuracy per epoch — monitor clean / FGSM / PGD accuracy and training accuracy
  per run, the detected CO onset (dashed line) and the final evaluation
  (markers at the evaluated epoch); Comparison — the runs overlaid (≥ 2 runs);
* Learning rate and momentum — their values at the last step of each epoch;
* AAER statistics (AAE fraction m/n, V_A, V_N, C_A), LAP perturbation norms
  (per layer), feature-activation differences V_act (per node), the mean FOSC of
  the monitor's FGSM and PGD points, GradAlign cosine — each when the runs record it;
* Evaluation — results.json and every eval_<suite>.json, with the sanity checks (an
  evaluation of a run's weight EMA is marked 'EMA');
* Adversarial examples — the first `ADV_EXAMPLES` test points at the evaluated
  checkpoint (the latest kept one if it is gone): clean, the run's own training
  attack (the value its train step ran) and PGD with the final-evaluation settings
  maximising the CE in evaluation mode (`evaluators.adversarial_examples`, kept in
  ``examples.npz``), with the predictions and the perturbations δ (scaled by max |δ| of the row);
* Layer-wise loss landscapes — the ``landscape_*.png`` that
  ``python -m fat_jax.analysis.landscape`` wrote into the workdir;
* Per-epoch records — the `fat_jax.reports.summary` tables.

`launch.py` calls `write_end_of_run_report` after `train_and_evaluate` (the training loop
itself never imports this module). Figures follow `fat_jax.reports.figures` (150 dpi, constrained
layout, everything inside the canvas).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
from typing import Sequence

import jax
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fat_jax.reports import aggregate, figures, summary

from fat_jax.analysis.evaluators import ADV_EXAMPLES, current_examples
from fat_jax.analysis.noise_eval import SUITE as NOISE_SUITE
from fat_jax.config import default_config
from fat_jax.data import DatasetNotFoundError
from fat_jax.errors import command_name
from fat_jax.parallel import is_writer
from fat_jax.run import run_log, tensorboard_log
from fat_jax.run.runs import Run, load_runs

log = logging.getLogger('fat_jax')

ACCURACY_STYLE = (('clean_accuracy', 'clean', 'tab:blue'), ('fgsm_accuracy', 'FGSM', 'tab:orange'),
                  ('pgd_accuracy', 'PGD', 'tab:red'))
AAER_KEYS = ('train_aaer_aae_fraction', 'train_aaer_abnormal_variation',
             'train_aaer_normal_variation', 'train_aaer_loss_variation')


def _color(i: int) -> str:
  return f'C{i % 10}'


def _epochs(run: Run, key: str):
  """(epochs, values) of the records that hold `key`."""
  records = [r for r in run.records if key in r]
  return [r['epoch'] for r in records], [r[key] for r in records]


def _panels(n: int, *, width: float = 3.6, height: float = 2.6, max_cols: int = 2):
  """`n` panels of `width` × `height` inches, at most `max_cols` to a row (two: 7.2 inches, a
  page's width, so that a page shows the text at its size), integer epoch ticks."""
  cols = min(n, max_cols)
  rows = -(-n // cols)
  fig = figures.new_figure(width * cols, height * rows)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax in axes[n:]:
    ax.set_visible(False)
  for ax in axes[:n]:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
  return fig, axes[:n]


def _save(fig: Figure, out_dir: str, name: str) -> str:
  figures.save(fig, os.path.join(out_dir, name))
  return name


def _title(run: Run) -> str:
  """The run's name over its method and ε (two lines that fit a panel)."""
  return (f"{run.name}\n{figures.wrap(run.label, 36)}, "
          f"ε={aggregate.COLUMNS['eps'].text(run.config.get('eps'))}")


def _co_onset(run: Run):
  """The CO onset epoch of results.json, else the first epoch the monitor flagged."""
  if run.results:
    return run.results.get('co_onset_epoch')
  return next((r['epoch'] for r in run.records if r.get('co_detected')), None)


def _mark_onset(ax, run: Run) -> None:
  onset = _co_onset(run)
  if onset is not None:
    ax.axvline(onset, color='k', ls='--', lw=1)


def _epoch_panel(ax, run: Run, ylabel: str, **limits) -> None:
  """A run's per-epoch panel: the CO onset marked, the run as title, the axes labelled."""
  _mark_onset(ax, run)
  ax.set(title=_title(run), xlabel='epoch', ylabel=ylabel, **limits)
  ax.title.set_fontsize(figures.TITLE_PT)


# ---------------------------------------------------------------------------
# Figures from metrics.jsonl and results.json.

def plot_accuracy(runs: Sequence[Run], out_dir: str) -> str:
  """Per run: monitor clean / FGSM / PGD and training accuracy, CO onset, final evaluation."""
  fig, axes = _panels(len(runs))
  for ax, run in zip(axes, runs):
    for key, label, color in ACCURACY_STYLE:
      ax.plot(*_epochs(run, key), 'o-', ms=3, color=color, label=f'{label} (monitor)')
    ax.plot(*_epochs(run, 'train_accuracy'), ':', color='grey', label='train (adversarial)')
    if run.results:
      for key, _, color in ACCURACY_STYLE:
        ax.plot(run.results['evaluated_epoch'], run.results[key], 'D', mfc='none', color=color,
                ms=7)
    ax.plot([], [], 'D', mfc='none', color='k', label='final evaluation')
    ax.plot([], [], 'k--', lw=1, label='CO onset')
    _epoch_panel(ax, run, 'accuracy', ylim=(0, 1))
  fig.legend(*axes[0].get_legend_handles_labels(), loc='outside lower center',
             ncol=2 * min(len(axes), 2), fontsize=figures.TEXT_PT, frameon=False)
  return _save(fig, out_dir, 'accuracy.png')


def plot_comparison(runs: Sequence[Run], out_dir: str) -> str:
  """Clean, FGSM and PGD monitor accuracy of all runs overlaid; × and a dotted line in the
  run's colour mark each CO onset."""
  fig, axes = _panels(3)
  for ax, (key, label, _) in zip(axes, ACCURACY_STYLE):
    for i, run in enumerate(runs):
      epochs, values = _epochs(run, key)
      ax.plot(epochs, values, 'o-', ms=3, color=_color(i), label=run.name)
      onset = _co_onset(run)
      if onset in epochs:
        ax.axvline(onset, color=_color(i), ls=':', lw=1)
        ax.plot(onset, values[epochs.index(onset)], 'kx', ms=8, mew=2)
    ax.set(title=f'{label} accuracy (monitor)', xlabel='epoch', ylabel='accuracy', ylim=(0, 1))
    ax.title.set_fontsize(figures.TITLE_PT)
  axes[0].plot([], [], 'kx', mew=2, label='CO onset')
  fig.legend(*axes[0].get_legend_handles_labels(), loc='outside lower center',
             ncol=min(len(runs) + 1, 4), fontsize=figures.TEXT_PT, frameon=False)
  return _save(fig, out_dir, 'comparison.png')


def plot_schedule(runs: Sequence[Run], out_dir: str) -> str:
  fig, axes = _panels(2)
  for i, run in enumerate(runs):
    for ax, key in zip(axes, ('lr', 'momentum')):
      ax.plot(*_epochs(run, key), 'o-', ms=3, color=_color(i), label=run.name)
  for ax, key in zip(axes, ('learning rate', 'momentum')):
    ax.set(title=f'{key} at the last step of each epoch', xlabel='epoch', ylabel=key)
    ax.title.set_fontsize(figures.TITLE_PT)
  axes[0].legend(fontsize=figures.TEXT_PT)
  return _save(fig, out_dir, 'schedule.png')


def plot_aaer(runs: Sequence[Run], out_dir: str) -> str:
  """AAE fraction m/n, V_A (solid) and V_N (dashed), C_A: epoch means of the AAER statistics."""
  fig, axes = _panels(3)
  for i, run in enumerate(runs):
    fraction, v_a, v_n, c_a = (_epochs(run, k) for k in AAER_KEYS)
    axes[0].plot(*fraction, 'o-', ms=3, color=_color(i), label=run.name)
    axes[1].plot(*v_a, 'o-', ms=3, color=_color(i), label=f'{run.name} V_A')
    axes[1].plot(*v_n, 's--', ms=3, color=_color(i), label=f'{run.name} V_N')
    axes[2].plot(*c_a, 'o-', ms=3, color=_color(i), label=run.name)
  axes[0].set(title='AAE fraction m/n', xlabel='epoch', ylabel='m/n (epoch mean)')
  axes[1].set(title='logit variation V_A (AAE), V_N (normal)', xlabel='epoch',
              ylabel='V_A, V_N (epoch mean)', yscale='log')
  axes[2].set(title='loss decrease C_A of the AAEs', xlabel='epoch', ylabel='C_A (epoch mean)')
  for ax in axes:
    ax.title.set_fontsize(figures.TITLE_PT)
  axes[1].legend(fontsize=figures.TEXT_PT)
  return _save(fig, out_dir, 'aaer.png')


def plot_lap(runs: Sequence[Run], out_dir: str) -> str:
  """Per run: the epoch-mean perturbation norm β·λ_l·‖w_l‖ of each layer l (colour), log scale."""
  fig, axes = _panels(len(runs))
  for ax, run in zip(axes, runs):
    epochs, norms = _epochs(run, 'train_lap_norm')
    norms = np.asarray(norms)
    num_layers = norms.shape[1]
    norm = Normalize(1, max(num_layers, 2))
    for l in range(num_layers):
      ax.plot(epochs, norms[:, l], 'o-', ms=2, color=ScalarMappable(norm, 'viridis').to_rgba(l + 1))
    ax.set(title=_title(run), xlabel='epoch', ylabel='‖Δw_l‖ (epoch mean)', yscale='log')
    ax.title.set_fontsize(figures.TITLE_PT)
    fig.colorbar(ScalarMappable(norm, 'viridis'), ax=ax, label='layer l')
  return _save(fig, out_dir, 'lap_norms.png')


def plot_vact(runs: Sequence[Run], out_dir: str) -> str:
  """Per run: V_act per feature node, mean ‖M_i(x) − M_i(x + δ)‖₂ on the monitor points."""
  fig, axes = _panels(len(runs))
  for ax, run in zip(axes, runs):
    epochs, vact = _epochs(run, 'vact')
    for j, node in enumerate(sorted(set().union(*vact))):
      ax.plot(epochs, [v.get(node, np.nan) for v in vact], 'o-', ms=3, color=_color(j),
              label=f'node {node}')
    _epoch_panel(ax, run, 'V_act')
    ax.legend(fontsize=figures.TEXT_PT)
  return _save(fig, out_dir, 'vact.png')


def plot_fosc(runs: Sequence[Run], out_dir: str) -> str:
  """Per run: the mean FOSC c(x + δ) = ε‖∇ℓ‖₁ − ⟨δ, ∇ℓ⟩ of the monitor's FGSM and PGD points
  (Wang et al., ICML 2019; 0 at a stationary point of the inner maximisation)."""
  fig, axes = _panels(len(runs))
  for ax, run in zip(axes, runs):
    for j, point in enumerate(('fgsm', 'pgd')):
      ax.plot(*_epochs(run, f'fosc_{point}'), 'o-', ms=3, color=_color(j),
              label=f'{point.upper()} point')
    _epoch_panel(ax, run, 'mean FOSC')
    ax.legend(fontsize=figures.TEXT_PT)
  return _save(fig, out_dir, 'fosc.png')


def plot_gradalign(runs: Sequence[Run], out_dir: str) -> str:
  fig, axes = _panels(1)
  for i, run in enumerate(runs):
    axes[0].plot(*_epochs(run, 'train_gradalign_cos'), 'o-', ms=3, color=_color(i),
                 label=run.name)
  axes[0].set(title='GradAlign: mean cos(∇ℓ(x), ∇ℓ(x + η))', xlabel='epoch',
              ylabel='cosine (epoch mean)')
  axes[0].title.set_fontsize(figures.TITLE_PT)
  axes[0].legend(fontsize=figures.TEXT_PT)
  return _save(fig, out_dir, 'gradalign.png')


def plot_signals(runs: Sequence[Run], out_dir: str) -> str:
  """Per run and CO signal (``signals.jsonl``, `fat_jax.run.co_guard`): the signal every
  `guard.every` steps, × where its detector triggered, a dashed line at a rollback, against the
  monitor's PGD accuracy (red, right axis from 0 to 1.2 × its maximum, at most 1: per epoch
  and, if logged, within epochs)."""
  logs = [run_log.read_records(run.workdir, name=run_log.SIGNALS) for run in runs]
  names = list(dict.fromkeys(k for records in logs for r in records for k in r if k not in (
      'epoch', 'step', 'triggered', 'scale', 'rollback')))
  fig, axes = _panels(len(runs) * len(names), max_cols=len(names))
  for i, (run, records) in enumerate(zip(runs, logs)):
    pgd = sorted([*zip(*_epochs(run, 'pgd_accuracy')), *(
        (r['epoch'], r['pgd_accuracy']) for r in run_log.read_records(
            run.workdir, name=run_log.MONITOR))])
    for ax, name in zip(axes[i * len(names):], names):
      epochs = [r['epoch'] for r in records if name in r]
      ax.plot(epochs, [r[name] for r in records if name in r], '-', color=_color(0), lw=1)
      hits = [r for r in records if name in r.get('triggered', ())]
      ax.plot([r['epoch'] for r in hits], [r[name] for r in hits], 'x', color='k', ms=5)
      for r in records:
        if r.get('rollback'):
          ax.axvline(r['epoch'], color='k', ls='--', lw=1)
      twin = ax.twinx()
      if pgd:
        twin.plot(*zip(*pgd), '-', color='tab:red', lw=1)
      top = max((a for _, a in pgd), default=1.0)  # the scale of the run's accuracies
      twin.set(ylim=(0, min(1.0, max(0.05, 1.2 * top))), ylabel='PGD accuracy (monitor)')
      ax.set(title=f'{run.name}: {name}', xlabel='epoch', ylabel=name)
      ax.title.set_fontsize(figures.TITLE_PT)
  return _save(fig, out_dir, 'signals.png')


# ---------------------------------------------------------------------------
# Adversarial examples (`evaluators.adversarial_examples`).

def _show(ax, image: np.ndarray, **kwargs) -> None:
  ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
            cmap='gray' if image.shape[-1] == 1 else None, interpolation='nearest', **kwargs)
  ax.set_xticks([])
  ax.set_yticks([])


def plot_adversarial_examples(run: Run, examples: dict, out_dir: str) -> str:
  """Rows: clean, training attack x + δ and δ, PGD x + δ and δ; titles 'label→prediction'."""
  x, labels = examples['inputs']['clean'], examples['labels']
  n = len(labels)
  rows = [('clean', 'clean', None), ('train_attack', 'training attack', None),
          ('train_attack', 'δ (training attack)', 'delta'), ('pgd', 'PGD', None),
          ('pgd', 'δ (PGD)', 'delta')]
  fig = figures.new_figure(0.75 * n + 1.3, 0.95 * len(rows) + 0.6)
  axes = fig.subplots(len(rows), n, squeeze=False)
  for r, (kind, label, what) in enumerate(rows):
    xk = examples['inputs'][kind]
    delta = xk - x
    scale = max(float(np.abs(delta).max()), 1e-12)
    for i in range(n):
      ax = axes[r, i]
      if what == 'delta':
        image = delta[i] / (2 * scale) + 0.5  # grey = 0, black/white = ∓max|δ|
        _show(ax, np.clip(image, 0, 1), vmin=0, vmax=1)
      else:
        _show(ax, xk[i], vmin=0, vmax=1)
        pred = examples['predictions'][kind][i]
        ax.set_title(f'{labels[i]}→{pred}', fontsize=figures.TEXT_PT,
                     color='tab:green' if pred == labels[i] else 'tab:red')
    axes[r, 0].set_ylabel(label + (f'\nmax|δ|={scale:.3f}' if what else ''),
                          fontsize=figures.TEXT_PT)
  fig.suptitle(f"{_title(run)}: test points at epoch {examples['epoch']} "
               f"(label→prediction; δ scaled by max|δ|)", fontsize=figures.TITLE_PT)
  return _save(fig, out_dir, f'adversarial_{_slug(run.name)}.png')


def _slug(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', name)


# ---------------------------------------------------------------------------
# Markdown.

def _settings(run: Run) -> str:
  c = run.config
  m, o, mo = c['method'], c['optim'], c['model']
  defaults = default_config().method
  method = ', '.join(f'{k}={v}' for k, v in sorted(m.items())
                     if k == 'name' or v != defaults.get(k))
  return (f"| {run.name} | {method} | {o['schedule']} lr {o['lr_max']}, {c['num_epochs']} epochs, "
          f"batch {c['batch_size']} | {mo['name']} (width {mo.get('width')}) | "
          f"{aggregate.COLUMNS['data'].value(run)} |")


def _ema_mark(result: dict) -> str:
  """' (EMA)' for an evaluation of the run's weight average, else ''."""
  return ' (EMA)' if result.get('evaluated_weights') == 'ema' else ''


def _results_table(runs: Sequence[Run]) -> str:
  lines = ['| run | epoch | n | ε | step | clean | FGSM | PGD | PGD-k-r | CO onset | train (s) |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|']
  for run in runs:
    r = run.results
    if r is None:
      lines.append(f'| {run.name} | no results.json yet |' + ' |' * 9)
      continue
    lines.append(
        f"| {run.name} | {r['evaluated_epoch']}{_ema_mark(r)} | {r['n']} | {r['eps']:.4g} | "
        f"{r['pgd_step_size']:.4g} | {r['clean_accuracy']:.3f} | {r['fgsm_accuracy']:.3f} | "
        f"{r['pgd_accuracy']:.3f} | {r['pgd_steps']}-{r['pgd_restarts']} | "
        f"{r['co_onset_epoch'] or '–'} | {r['train_time_s']:.0f} |")
  return '\n'.join(lines)


def _evaluation_section(run: Run, suite: str, report: dict) -> str:
  if suite == NOISE_SUITE:  # --mode=noise_eval: its own table (fat_jax.analysis.noise_eval)
    return (f"#### {run.name}: `eval_{suite}.json` (epoch {report['evaluated_epoch']}"
            f"{_ema_mark(report)}, inference noise)\n\n{report['table']}")
  head = (f"#### {run.name}: `eval_{suite}.json` (epoch {report.get('evaluated_epoch', '?')}"
          f"{_ema_mark(report)}, "
          f"n={report['n']}, ε={report['eps']:.4g}, seed {report['seed']})")
  rows = ['| attack | accuracy after it | time (s) |', '|---|---:|---:|',
          f"| clean | {report['clean_accuracy']:.4f} | "
          f"{report.get('time_by_attack_s', {}).get('clean', 0):.1f} |"]
  for name, acc in report['robust_accuracy_by_attack'].items():
    rows.append(f"| {name} | {acc:.4f} | {report.get('time_by_attack_s', {}).get(name, 0):.1f} |")
  final = f"Robust accuracy **{report['robust_accuracy']:.4f}**"
  if report.get('randomized'):
    lo, hi = report['robust_accuracy_ci95']
    final += (f" (95% interval [{lo:.4f}, {hi:.4f}] over {report['n_draws']} draws; majority "
              f"vote {report['robust_majority_accuracy']:.4f})")
  checks = report.get('checks', {})
  parts = [head, '', '\n'.join(rows), '', final + '.']
  if checks:
    lines = ['| check | verdict | message |', '|---|---|---|']
    for name, check in checks.items():
      status = check['status']
      lines.append(f"| {name} | {'**WARN**' if status == 'warn' else status} | "
                   f"{check['message'].replace('|', '/')} |")
    count = lambda status: sum(c['status'] == status for c in checks.values())
    warns, idle = count('warn'), count('uninformative')
    parts += ['', f'Sanity checks: {len(checks) - warns - idle} without warning, {warns} '
              f'warning(s)' + (f', {idle} uninformative (nothing left to test)' if idle else '') +
              '.', '', '\n'.join(lines)]
  return '\n'.join(parts)


def _figure(name: str, caption: str) -> str:
  return f'![{caption}]({name})\n\n{caption}'


def write_report(workdirs: Sequence[str], out_dir: str = '', *, examples: bool = True) -> str:
  """Writes report.md and its figures for the runs in `workdirs` into `out_dir`; returns its path.

  The report draws the runs' artefacts. The one it has the examples evaluator compute first,
  where missing or stale, is the adversarial examples (`evaluators.current_examples`);
  `examples=False` skips them (no checkpoint or data needed).
  """
  runs = load_runs(workdirs)
  return render_report(runs, out_dir, _adversarial_examples(runs) if examples else {})


def _adversarial_examples(runs: Sequence[Run]) -> dict[str, dict | str]:
  """run name → its adversarial examples, or why they are not available."""
  shown = {}
  for run in runs:
    try:
      shown[run.name] = current_examples(run)
    except (FileNotFoundError, DatasetNotFoundError) as e:
      shown[run.name] = f'not available ({e})'
  return shown


def render_report(runs: Sequence[Run], out_dir: str, examples: dict[str, dict | str]) -> str:
  """Writes report.md and its figures from the artefacts of `runs` (`examples`: run name →
  adversarial examples or why there are none; a run not in it: skipped); returns its path."""
  if not out_dir:
    paths = [os.path.abspath(r.workdir) for r in runs]
    out_dir = os.path.dirname(os.path.join(
        paths[0] if len(paths) == 1 else os.path.commonpath(paths), run_log.REPORT))
  os.makedirs(out_dir, exist_ok=True)
  with_records = [r for r in runs if r.records]
  md = ['# fat_jax report', '', ', '.join(f'`{r.workdir}`' for r in runs), '', '## Runs', '',
        aggregate.markdown_table(runs, aggregate.DEFAULT_COLUMNS), '',
        '| run | method | optimiser | model | data |', '|---|---|---|---|---|',
        *[_settings(r) for r in runs], '']

  md += ['## Accuracy per epoch', '']
  if with_records:
    md += [_figure(plot_accuracy(with_records, out_dir),
                   'Monitor accuracy on the fixed test subset after each epoch (lines), training '
                   'accuracy on the adversarial training points (dotted), the final evaluation '
                   '(diamonds) and the detected CO onset (dashed).'), '']
  else:
    md += ['No epoch records yet.', '']
  if len(with_records) > 1:
    md += ['## Comparison', '',
           _figure(plot_comparison(with_records, out_dir),
                   'Monitor accuracy of all runs; × and a dotted line mark each CO onset.'), '']
  if with_records:
    md += ['## Learning rate and momentum', '',
           _figure(plot_schedule(with_records, out_dir),
                   'Learning rate and momentum at the last step of each epoch.'), '']
  statistics = (
      ('AAER statistics', 'train_aaer_aae_fraction', plot_aaer,
       'Epoch means of the AAE fraction m/n (the AAER paper\'s CO indicator), of the logit '
       'variations V_A (AAEs) and V_N (normal examples), and of C_A.'),
      ('LAP perturbation norms', 'train_lap_norm', plot_lap,
       'Epoch mean of the norm of the perturbation LAP adds to each layer l (LAP order).'),
      ('Feature-activation differences (V_act)', 'vact', plot_vact,
       'V_act per feature node: mean ‖M_i(x) − M_i(x + δ)‖₂ on the monitor points.'),
      ('First-order stationarity (FOSC)', 'fosc_fgsm', plot_fosc,
       'Mean FOSC c(x + δ) = ε‖∇ℓ‖₁ − ⟨δ, ∇ℓ⟩ of the per-example CE at the monitor\'s FGSM and '
       'PGD points (Wang et al., ICML 2019): 0 where the attack reached a stationary point of '
       'the inner maximisation.'),
      ('GradAlign', 'train_gradalign_cos', plot_gradalign,
       'Epoch mean of the gradient alignment that GradAlign regularises.'))
  for heading, key, plot, caption in statistics:
    having = [r for r in with_records if any(key in e for e in r.records)]
    if having:
      md += [f'## {heading}', '', _figure(plot(having, out_dir), caption), '']
  guarded = [r for r in with_records if run_log.read_records(r.workdir, name=run_log.SIGNALS)]
  if guarded:
    md += ['## CO signals', '',
           _figure(plot_signals(guarded, out_dir),
                   'The CO signals on the guard\'s fixed training batch every `guard.every` steps '
                   '(docs/co_guard.md), × where the detector triggered and a dashed line at a '
                   'rollback, against the monitor\'s PGD accuracy (red, right axis).'), '']

  md += ['## Evaluation', '', 'Final evaluation (`results.json`, the last good epoch):', '',
         _results_table(runs), '']
  for run in runs:
    for suite, report in run.evaluations.items():
      md += [_evaluation_section(run, suite, report), '']
  if not any(r.evaluations for r in runs):
    md += [f'No attack-suite evaluations yet (`{command_name()} --mode=eval '
           '--config.eval.suite=aa_standard ...` writes `eval_aa_standard.json`).', '']

  md += ['## Adversarial examples', '',
         f'The first {ADV_EXAMPLES} test points at the evaluated checkpoint, evaluation mode: '
         "the run's training attack and PGD with the final-evaluation settings (maximising "
         'the CE, no early stop); titles are label→prediction (red: wrong).', '']
  for run in runs:
    shown = examples.get(run.name, 'skipped')
    md += [f'![{run.name}]({plot_adversarial_examples(run, shown, out_dir)})'
           if isinstance(shown, dict) else f'{run.name}: {shown}.', '']

  md += ['## Layer-wise loss landscapes', '']
  found = False
  for run in runs:
    figures = sorted(p for p in os.listdir(run.workdir) if re.fullmatch(r'landscape_\dd\.png', p))
    for path in figures:
      name = f'{_slug(run.name)}_{path}'
      shutil.copyfile(os.path.join(run.workdir, path), os.path.join(out_dir, name))
      md += [f'![{run.name} {path}]({name})', '']
      found = True
  if not found:
    md += ['None computed: `python -m fat_jax.analysis.landscape WORKDIR --epochs=E1,E2` writes '
           'them into the workdir.', '']
  else:
    md += ['CE along a random filter-normalised direction applied to one layer at a time '
           '(columns; l in the LAP order) and to all layers, at each checkpoint (rows), with '
           'inputs fixed at the checkpoint: clean, the training attack and PGD (see '
           '`fat_jax/analysis/landscape.py`).', '']

  md += ['## Per-epoch records', '']
  for run in with_records:
    md += [f'### {run.name}', '', summary.epoch_table(run.workdir), '']
  path = os.path.join(out_dir, os.path.basename(run_log.REPORT))
  with open(path, 'w') as f:
    f.write('\n'.join(md))
  return path


def try_write_report(workdir: str, *, examples: bool = True) -> str | None:
  """`write_report([workdir], examples=examples)`, logging instead of raising: the run's
  results are saved before, and a failing figure must not lose them."""
  try:
    return write_report([workdir], examples=examples)
  except Exception as e:  # pylint: disable=broad-except
    log.warning('The report of %s failed (%s: %s); the run\'s results are saved. Retry with '
                'python -m fat_jax.reports.report %s', workdir, type(e).__name__, e, workdir)
    return None


def write_end_of_run_report(config, workdir: str) -> str | None:
  """The report `launch.py` writes after `train_and_evaluate`: with `config.report`, on the
  writing process, `try_write_report(workdir)`, its figures also into the run's TensorBoard
  events (`config.tensorboard`); None otherwise or when it fails."""
  if not (config.report and is_writer()):
    return None
  # The adversarial examples restore a checkpoint, which every process of a multi-host run
  # would have to join: there, `python -m fat_jax.reports.report WORKDIR` adds them afterwards.
  path = try_write_report(workdir, examples=jax.process_count() == 1)
  results = run_log.read_json(workdir, run_log.RESULTS)
  if path and config.tensorboard and results:
    events = tensorboard_log.EventLog(workdir, first_step=0)
    events.write_figures(os.path.dirname(path), step=results['evaluated_step'])
    events.close()
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('workdirs', nargs='+', help='run directories (a folder of runs counts as '
                      'its runs)')
  parser.add_argument('--out', default='', help='output folder (default: WORKDIR/report, or '
                      'the common parent folder/report for several runs)')
  parser.add_argument('--no_examples', action='store_true',
                      help='skip the adversarial examples (no checkpoint or data needed)')
  parser.add_argument('--sweep', action='store_true',
                      help='instead: the ε sweep over seeds (fat_jax.reports.aggregate.write_sweep) '
                      'into --out (default: the common parent folder/sweep); the options of '
                      '`python -m fat_jax.reports.aggregate --sweep` (--metrics, --co-drop, '
                      '--co-gap) pass through')
  args, sweep_options = parser.parse_known_args(argv)
  if args.sweep:
    aggregate.main([*args.workdirs, '--sweep', *sweep_options]
                   + ([f'--out={args.out}'] if args.out else []))
    return
  if sweep_options:
    parser.error(f'unrecognized arguments: {" ".join(sweep_options)}')
  print(write_report(args.workdirs, args.out, examples=not args.no_examples))


if __name__ == '__main__':
  main()
