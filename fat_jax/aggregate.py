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
import io
from typing import Callable, Sequence

from fat_jax.runs import Run, load_runs


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
