"""Result tables across runs: ``python -m fat_jax.reports.aggregate WORKDIR [WORKDIR ...]``.

One row per run (a workdir with ``results.json``; a folder without one stands
for the runs in its sub-folders), as Markdown (default) or CSV:

  python -m fat_jax.reports.aggregate runs/co_eps0.15
  python -m fat_jax.reports.aggregate runs/*/ --format=csv > results.csv
  python -m fat_jax.reports.aggregate runs/co_eps0.15 \\
      --columns=method,seed,clean,fgsm,pgd,monitor_pgd,co_epoch   # the README's comparison

Columns (`--columns`, comma-separated; default `DEFAULT_COLUMNS`): see
`COLUMNS`. Every number is read from the run's files: ``results.json`` (final
clean / FGSM / PGD-k-r accuracy, CO onset, training time), ``metrics.jsonl``
(the per-epoch monitor) and ``eval_aa_standard.json`` (AutoAttack, from
``launch.py --mode=eval --config.eval.suite=aa_standard``).

``--sweep`` groups the finished runs by (method label, training ε) over seeds instead
(`sweep_points`): mean ± sample standard deviation (ddof = 1; none for a single run) of the
final clean / FGSM / PGD accuracy, the seeds, and the CO rate (the fraction of the group's runs
whose monitor flagged CO, ``co_onset_epoch`` in ``results.json``, or in CO from the start, below),
as a table, ``sweep.json`` and ``sweep.png`` (accuracy against training ε, one line per method
with ± std bars, and the CO rate per point) in ``--out``:

  python -m fat_jax.reports.aggregate runs/cifar --sweep --out=runs/cifar/sweep

``--co-drop=D --co-gap=G`` counts CO with another threshold of the monitor's rule instead
(`analysis.diagnostics.co_onset` over each run's per-epoch records, ``metrics.jsonl``): where
robust accuracies stay low, a run can collapse to zero PGD accuracy without the drop of 0.1 or
0.2 below its best that the training recipes flag. A run whose PGD accuracy never rose above
the drop and ends more than the gap below its FGSM accuracy counts as in CO from its first epoch
(`analysis.diagnostics.co_from_start`), under either rule.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
from typing import Callable, Sequence

import numpy as np

from fat_jax.analysis.diagnostics import co_from_start, co_onset
from fat_jax.reports import figures
from fat_jax.run import run_log
from fat_jax.run.runs import Run, load_runs


# ---------------------------------------------------------------------------
# Columns: name → (header, alignment, value for CSV, text for Markdown).

def _fmt(value, digits: int = 3) -> str:
  return '–' if value is None else f'{value:.{digits}f}'


def _eps(value) -> str:
  """ε as k/255 when it is one, else as a decimal."""
  if value is None:
    return '–'
  k = value * 255
  return f'{round(k)}/255' if abs(k - round(k)) < 1e-6 and k >= 1 else f'{value:.4g}'


def _result(key: str) -> Callable[[Run], object]:
  return lambda run: None if run.results is None else run.results.get(key)


def _aa(run: Run):
  report = run.evaluations.get('aa_standard')
  return None if report is None else report['robust_accuracy']


def _monitor_pgd(run: Run):
  pgd = [r['pgd_accuracy'] for r in run.records]
  return (max(pgd), pgd[-1]) if pgd else None


def _data(run: Run) -> str:
  data = run.config.get('data', {})
  n = data.get('n_train') or 0
  return f"{data.get('name')}[:{n}]" if n else str(data.get('name'))


@dataclasses.dataclass(frozen=True)
class Column:
  header: str
  align: str                       # Markdown alignment row entry
  value: Callable[[Run], object]   # raw value (CSV)
  text: Callable[[object], str] = str  # Markdown cell from the raw value


COLUMNS = {
    'run': Column('run', '---', lambda r: r.name),
    'method': Column('method', '---', lambda r: r.label),
    'data': Column('data', '---', _data),
    'model': Column('model', '---', lambda r: r.config.get('model', {}).get('name')),
    'eps': Column('ε', '---:', lambda r: r.config.get('eps'), _eps),
    'seed': Column('seed', '---:', lambda r: r.config.get('seed')),
    'epoch': Column('epoch', '---:', _result('evaluated_epoch'),
                    lambda v: '–' if v is None else str(v)),
    'n': Column('n', '---:', _result('n'), lambda v: '–' if v is None else str(v)),
    'clean': Column('clean', '---:', _result('clean_accuracy'), _fmt),
    'fgsm': Column('FGSM', '---:', _result('fgsm_accuracy'), _fmt),
    'pgd': Column('PGD', '---:', _result('pgd_accuracy'), _fmt),
    'aa': Column('AA', '---:', _aa, _fmt),
    'monitor_pgd': Column('monitor PGD best / last', '---:', _monitor_pgd,
                          lambda v: '–' if v is None else f'{v[0]:.3f} / {v[1]:.3f}'),
    'monitor_pgd_by_epoch': Column(
        'PGD by epoch', '---', lambda r: [e['pgd_accuracy'] for e in r.records],
        lambda v: ' '.join(f'{a:.2f}' for a in v)),
    'co_epoch': Column('CO epoch', '---:', _result('co_onset_epoch'),
                       lambda v: '–' if v is None else str(v)),
    'train_time': Column('train time (s)', '---:', _result('train_time_s'),
                         lambda v: '–' if v is None else f'{v:.0f}'),
}
DEFAULT_COLUMNS = ('run', 'method', 'data', 'eps', 'seed', 'clean', 'fgsm', 'pgd', 'aa',
                   'co_epoch', 'train_time')


def _check_columns(columns: Sequence[str]) -> None:
  unknown = [c for c in columns if c not in COLUMNS]
  if unknown or not columns:
    raise ValueError(f'Unknown columns {unknown}; choose from {sorted(COLUMNS)}.')


def markdown_table(runs: Sequence[Run], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
  _check_columns(columns)
  cols = [COLUMNS[c] for c in columns]
  lines = ['| ' + ' | '.join(c.header for c in cols) + ' |',
           '|' + '|'.join(c.align for c in cols) + '|']
  for run in runs:
    lines.append('| ' + ' | '.join(c.text(c.value(run)) for c in cols) + ' |')
  return '\n'.join(lines)


def csv_table(runs: Sequence[Run], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
  """CSV with the raw values (full precision; empty = missing; pairs as 'a/b')."""
  _check_columns(columns)
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(columns)
  for run in runs:
    row = []
    for c in columns:
      v = COLUMNS[c].value(run)
      row.append('' if v is None else '/'.join(map(str, v)) if isinstance(v, (list, tuple))
                 else v)
    writer.writerow(row)
  return out.getvalue()


# ---------------------------------------------------------------------------
# The ε sweep: runs grouped by (method, training ε) over seeds.

SWEEP_METRICS = ('clean', 'fgsm', 'pgd')
SWEEP_DDOF = 1      # sample standard deviation over the runs of a point
SWEEP_JSON = 'sweep.json'
SWEEP_PNG = 'sweep.png'


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  """(mean, sample standard deviation with ddof = `SWEEP_DDOF`; None for a single value)."""
  a = np.asarray(values, np.float64)
  return float(a.mean()), (float(a.std(ddof=SWEEP_DDOF)) if len(a) > SWEEP_DDOF else None)


# Config fields in which the seeds of one sweep point may differ (where and how a run ran).
SWEEP_FREE_FIELDS = ('seed', 'progress', 'tensorboard', 'report', 'compilation_cache',
                     'cpu_devices', 'checkpoint_keep', 'data.dir', 'data.source', 'data.workers',
                     'distributed', 'eval.batch_size')


def _flat_config(config, prefix: str = '') -> dict:
  out = {}
  for key, value in config.items():
    name = prefix + key
    if any(name == f or name.startswith(f + '.') for f in SWEEP_FREE_FIELDS):
      continue
    out.update(_flat_config(value, name + '.') if hasattr(value, 'items') else
               {name: tuple(value) if isinstance(value, list) else value})
  return out


def _check_same_setting(method: str, eps: float, group: Sequence[Run]) -> None:
  """The runs of one point differ only in `SWEEP_FREE_FIELDS`; else one line naming the
  first fields that differ."""
  first = _flat_config(group[0].config)
  for run in group[1:]:
    other = _flat_config(run.config)
    differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
    if differ:
      raise ValueError(f'The {method} runs at ε={_eps(eps)} differ in more than the seed: '
                       f'{group[0].name} and {run.name} in {", ".join(differ[:5])}.')


def sweep_points(runs: Sequence[Run], co_rule: dict | None = None) -> list[dict]:
  """One point per (method label, training ε) over the finished runs (those with
  ``results.json``), sorted by method then ε: {'method', 'eps', 'eval_eps', 'n_runs',
  'seeds', 'runs', '<metric>_mean', '<metric>_std' for `SWEEP_METRICS`, 'co_runs', 'co_rate'}.
  The runs of one point must have the same config up to `SWEEP_FREE_FIELDS` (the seed, where
  they ran). A run is in CO by `_in_co` (`co_rule` = {'drop': D, 'gap': G} or None: the
  runs' own monitor rule)."""
  groups: dict[tuple[str, float], list[Run]] = {}
  for run in runs:
    if run.results is not None:
      groups.setdefault((run.label, float(run.config.get('eps'))), []).append(run)
  if not groups:
    raise ValueError('No finished runs (results.json) to sweep over: '
                     f'{", ".join(r.name for r in runs) or "none given"}.')
  points = []
  for (method, eps), group in sorted(groups.items()):
    _check_same_setting(method, eps, group)
    point = {'method': method, 'eps': eps, 'eval_eps': group[0].eval_eps, 'n_runs': len(group),
             'seeds': sorted(r.config.get('seed') for r in group),
             'runs': [r.workdir for r in group]}
    for metric in SWEEP_METRICS:
      point[f'{metric}_mean'], point[f'{metric}_std'] = mean_std(
          [r.results[f'{metric}_accuracy'] for r in group])
    co = [_in_co(r, co_rule) for r in group]
    point['co_runs'], point['co_rate'] = int(sum(co)), float(np.mean(co))
    points.append(point)
  return points


def _in_co(run: Run, co_rule: dict | None) -> bool:
  """Whether `run` fell into CO: its monitor flagged an onset (``co_onset_epoch``; with
  `co_rule`, `co_onset` of its per-epoch records under that rule), or its per-epoch records show
  CO from the first epoch on (`co_from_start`, under `co_rule` or the run's `co_monitor`)."""
  records = [r for r in run.records if 'pgd_accuracy' in r]
  rule = co_rule or {k: run.config.co_monitor[k] for k in ('drop', 'gap')}
  onset = (run.results.get('co_onset_epoch') if co_rule is None else
           co_onset(records, **co_rule))
  return onset is not None or co_from_start(records, **rule)


def mean_pm_std(mean: float | None, std: float | None, digits: int = 3) -> str:
  """'mean ± std' with `digits` decimals ('mean' when std is None, '–' when mean is)."""
  if mean is None:
    return '–'
  return f'{mean:.{digits}f}' + ('' if std is None else f' ± {std:.{digits}f}')


def sweep_table(points: Sequence[dict]) -> str:
  """Markdown: method, ε, seeds, mean ± std (ddof = 1) of each metric, CO runs / runs."""
  lines = ['| method | ε | seeds | clean | FGSM | PGD | CO rate |',
           '|---|---:|---|---:|---:|---:|---:|']
  for p in points:
    cells = [mean_pm_std(p[f'{m}_mean'], p[f'{m}_std']) for m in SWEEP_METRICS]
    lines.append(f"| {p['method']} | {_eps(p['eps'])} | {','.join(map(str, p['seeds']))} | "
                 f"{' | '.join(cells)} | {p['co_runs']}/{p['n_runs']} |")
  return '\n'.join(lines)


def plot_sweep(points: Sequence[dict], path: str, metrics: Sequence[str] = ('pgd',)) -> str:
  """Accuracy against training ε (×255), one line per method with ± std error bars (one panel
  per metric of `metrics`), and below them the CO rate of every point on the same ε axis."""
  unknown = [m for m in metrics if m not in SWEEP_METRICS]
  if unknown or not metrics:
    raise ValueError(f'Unknown sweep metrics {unknown}; choose from {SWEEP_METRICS}.')
  methods = sorted({p['method'] for p in points})
  names = {'clean': 'clean', 'fgsm': 'FGSM', 'pgd': 'PGD'}
  fig = figures.new_figure(4.2, 2.4 * len(metrics) + 1.8)
  axes = fig.subplots(len(metrics) + 1, 1, sharex=True,
                      height_ratios=[2.4] * len(metrics) + [1.4])
  for i, method in enumerate(methods):
    pts = sorted((p for p in points if p['method'] == method), key=lambda p: p['eps'])
    x = np.array([p['eps'] * 255 for p in pts])
    for ax, metric in zip(axes, metrics):
      mean = np.array([p[f'{metric}_mean'] for p in pts])
      std = np.array([p[f'{metric}_std'] or 0.0 for p in pts])
      ax.errorbar(x, mean, yerr=std, color=f'C{i % 10}', marker='o', ms=4, lw=1.2, capsize=3,
                  label=method)
      ax.fill_between(x, mean - std, mean + std, color=f'C{i % 10}', alpha=0.15, lw=0)
    dodge = 0.12 * (i - (len(methods) - 1) / 2)  # methods sharing a CO rate stay apart
    axes[-1].plot(x + dodge, [p['co_rate'] for p in pts], color=f'C{i % 10}', marker='s', ms=4,
                  lw=1)
  for ax, metric in zip(axes, metrics):
    ax.set_ylabel(f'{names[metric]} accuracy', fontsize=figures.TEXT_PT)
    ax.set_ylim(bottom=0)
  axes[-1].set(ylim=(-0.05, 1.05), yticks=(0, 0.5, 1))
  axes[-1].set_ylabel('CO rate', fontsize=figures.TEXT_PT)
  axes[-1].set_xlabel('training ε (× 1/255)', fontsize=figures.TEXT_PT)
  axes[-1].set_xticks(sorted({round(p['eps'] * 255, 3) for p in points}))
  for ax in axes:
    ax.tick_params(labelsize=figures.TICK_PT)
    ax.grid(alpha=0.3)
  seeds = max(p['n_runs'] for p in points)
  fig.suptitle(figures.wrap(f'Final accuracy against training ε: mean ± std '
                            f'(ddof={SWEEP_DDOF}) over ≤ {seeds} seed{"s" * (seeds > 1)}', 60),
               fontsize=figures.TITLE_PT)
  fig.legend(*axes[0].get_legend_handles_labels(), loc='outside lower center',
             ncol=min(len(methods), 4), fontsize=figures.TEXT_PT, frameon=False)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return figures.save(fig, path)


def write_sweep(runs: Sequence[Run], out_dir: str, metrics: Sequence[str] = ('pgd',),
                co_rule: dict | None = None) -> str:
  """`sweep_points` of `runs` into ``out_dir/sweep.json`` (with the table, ddof and the CO
  rule: None for the runs' own monitor) and ``out_dir/sweep.png``; returns the table."""
  points = sweep_points(runs, co_rule)
  table = sweep_table(points)
  os.makedirs(out_dir, exist_ok=True)
  run_log.atomic_write_json(os.path.join(out_dir, SWEEP_JSON),
                            {'ddof': SWEEP_DDOF, 'co_rule': co_rule, 'points': points,
                             'table': table}, sort_keys=False)
  plot_sweep(points, os.path.join(out_dir, SWEEP_PNG), metrics)
  return table


def _common_folder(runs: Sequence[Run]) -> str:
  return os.path.commonpath([os.path.abspath(os.path.dirname(r.workdir)) for r in runs])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--columns', default=','.join(DEFAULT_COLUMNS),
                      help=f'comma-separated, from {", ".join(COLUMNS)}')
  parser.add_argument('--format', default='markdown', choices=('markdown', 'csv'))
  parser.add_argument('--sweep', action='store_true', help='mean ± std over seeds per (method, '
                      'ε), CO rate; writes sweep.json and sweep.png into --out')
  parser.add_argument('--out', default='', help='--sweep: output folder (default: the runs\' '
                      'common parent folder/sweep)')
  parser.add_argument('--metrics', default='pgd', help='--sweep: figure panels, comma-separated '
                      f'from {",".join(SWEEP_METRICS)}')
  parser.add_argument('--co-drop', type=float, help='--sweep: CO when the monitor\'s PGD '
                      'accuracy falls more than this below its best (with --co-gap; default: '
                      'the runs\' own monitor, co_onset_epoch)')
  parser.add_argument('--co-gap', type=float, help='--sweep: ... while FGSM accuracy exceeds '
                      'PGD accuracy by more than this')
  args = parser.parse_args(argv)
  if (args.co_drop is None) != (args.co_gap is None):
    parser.error('--co-drop and --co-gap go together')
  co_rule = None if args.co_drop is None else {'drop': args.co_drop, 'gap': args.co_gap}
  try:
    runs = load_runs(args.workdirs)
  except (FileNotFoundError, ValueError) as e:  # not a run directory, a corrupt config: one line
    raise SystemExit(f'fat_jax.reports.aggregate: {e}') from None
  if args.sweep:
    out = args.out or os.path.join(_common_folder(runs), 'sweep')
    try:
      print(write_sweep(runs, out, [m for m in args.metrics.split(',') if m], co_rule))
    except ValueError as e:  # runs that cannot be averaged, unknown metrics: one line
      raise SystemExit(f'fat_jax.reports.aggregate --sweep: {e}') from None
    print(f'Sweep: {os.path.join(out, SWEEP_JSON)}, {os.path.join(out, SWEEP_PNG)}')
    return
  columns = [c for c in args.columns.split(',') if c]
  print(markdown_table(runs, columns) if args.format == 'markdown' else csv_table(runs, columns),
        end='' if args.format == 'csv' else '\n')


if __name__ == '__main__':
  main()
