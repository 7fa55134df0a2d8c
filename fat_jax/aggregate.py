"""Result tables across runs: ``python -m fat_jax.aggregate WORKDIR [WORKDIR ...]``.

One row per run (a workdir with ``results.json``; a folder without one stands
for the runs in its sub-folders), as Markdown (default) or CSV:

  python -m fat_jax.aggregate runs/co_eps0.15
  python -m fat_jax.aggregate runs/*/ --format=csv > results.csv
  python -m fat_jax.aggregate runs/co_eps0.15 \\
      --columns=method,seed,clean,fgsm,pgd,monitor_pgd,co_epoch   # the README's comparison

Columns (`--columns`, comma-separated; default `DEFAULT_COLUMNS`): see
`COLUMNS`. Every number is read from the run's files: ``results.json`` (final
clean / FGSM / PGD-k-r accuracy, CO onset, training time), ``metrics.jsonl``
(the per-epoch monitor) and ``eval_aa_standard.json`` (AutoAttack, from
``launch.py --mode=eval --config.eval.suite=aa_standard``).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import io
import json
import os
from typing import Callable, Sequence

from fat_jax import run_log
from fat_jax.recipes import VARIANTS

# Recipe variants named in the configs: LAP uses 'r', AAER 'rs' for U(−ε, ε), α = 1.25ε.
VARIANT_NAMES = {'lap': ('v', 'r', 'n'), 'aaer': ('rs', 'n')}
COMPONENT_FIELDS = (('lap', 'lap_beta'), ('aaer', 'aaer_lambda1'),
                    ('gradalign', 'gradalign_lambda'), ('elle', 'elle_lambda'))


@dataclasses.dataclass
class Run:
  """The files of one run's workdir."""
  workdir: str
  name: str
  config: dict
  records: list[dict]
  results: dict | None
  evaluations: dict[str, dict]  # suite → eval_<suite>.json

  @property
  def label(self) -> str:
    return method_label(self.config.get('method', {}))


def is_run(path: str) -> bool:
  return os.path.exists(os.path.join(path, run_log.CONFIG))


def expand_workdirs(paths: Sequence[str]) -> list[str]:
  """`paths`, each folder that is not a run replaced by the runs in its sub-folders (sorted)."""
  workdirs = []
  for path in paths:
    if is_run(path):
      workdirs.append(path)
      continue
    inner = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(path, '*', run_log.CONFIG)))
    if not inner:
      raise FileNotFoundError(f'{path} is not a run directory (no {run_log.CONFIG}) and has no '
                              'run directories inside; pass the --workdir of a training run.')
    workdirs.extend(inner)
  return workdirs


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Short unique names: the folder names, or the paths below the common folder if they clash."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(set(names)) == len(names):
    return names
  common = os.path.commonpath([os.path.abspath(w) for w in workdirs])
  return [os.path.relpath(os.path.abspath(w), common) for w in workdirs]


def load_run(workdir: str, name: str = '') -> Run:
  config = run_log.read_json(workdir, run_log.CONFIG)
  if config is None:
    raise FileNotFoundError(f'No {run_log.CONFIG} in {workdir}: pass the --workdir of a run.')
  evaluations = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'eval_*.json'))):
    with open(path) as f:
      evaluations[os.path.basename(path)[len('eval_'):-len('.json')]] = json.load(f)
  return Run(workdir, name or os.path.basename(os.path.normpath(workdir)), config,
             run_log.read_records(workdir), run_log.read_json(workdir, run_log.RESULTS),
             evaluations)


def load_runs(paths: Sequence[str]) -> list[Run]:
  workdirs = expand_workdirs(paths)
  return [load_run(w, n) for w, n in zip(workdirs, run_names(workdirs))]


def method_label(method: dict) -> str:
  """The recipe name of a method config: 'fgsm', 'n_lap', 'rs_aaer', 'n_fgsm+aaer',
  'awp_trades', ..."""
  name = method.get('name', '?')
  spec = tuple(method.get(k) for k in ('init', 'init_scale', 'alpha', 'project'))
  for variant in VARIANT_NAMES.get(name, ()):
    if spec == VARIANTS[variant]:
      name = f'{variant}_{name}'
      break
  extras = [c for c, field in COMPONENT_FIELDS
            if method.get(field) is not None and c not in name.split('_')]
  label = '+'.join([name] + extras)
  return f'awp_{label}' if method.get('awp_gamma') is not None else label


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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--columns', default=','.join(DEFAULT_COLUMNS),
                      help=f'comma-separated, from {", ".join(COLUMNS)}')
  parser.add_argument('--format', default='markdown', choices=('markdown', 'csv'))
  args = parser.parse_args(argv)
  runs = load_runs(args.workdirs)
  columns = [c for c in args.columns.split(',') if c]
  print(markdown_table(runs, columns) if args.format == 'markdown' else csv_table(runs, columns),
        end='' if args.format == 'csv' else '\n')


if __name__ == '__main__':
  main()
