"""The CO signals over the runs of a study: how early each signal warns of catastrophic
overfitting, how often it warns without one, and the comparison of the methods and policies.

  python -m fat_jax.reports.co_signals runs/guard_study/eps0.15 --out=runs/guard_study/eps0.15/co

Definitions (docs/co_guard.md, "Study"):

* monitor points: the per-epoch monitor (``metrics.jsonl``, at the epoch's last step) and the
  monitor within epochs (``monitor.jsonl``, every `eval.monitor_every_steps` steps), by step;
* CO onset: the step of the first monitor point at which the run's `co_monitor` rule holds
  (`analysis.diagnostics.co_onset`: PGD accuracy more than `drop` below the best of the earlier
  points while FGSM accuracy exceeds it by more than `gap`); a CO run is a run with an onset;
* CO from the start: a run without an onset whose PGD accuracy never rose above `drop` and ends
  more than `gap` below its FGSM accuracy (`analysis.diagnostics.co_from_start`): no onset to
  warn of, so neither a CO run of the lead times nor a run without CO of the false alarms;
* a signal's first trigger: the step of the first check (``signals.jsonl``) whose detector
  flagged it; its lead time over a CO run = onset − first trigger (steps; < 0: it warned after
  the collapse; none: it never triggered);
* its false alarms over a run without CO: the checks that flagged it (``triggers``).

The signals are read from the runs whose guard only logs (`guard.policy = 'off'`): a policy
that acts changes the course the signals would have warned of. The comparison groups the runs by
their name without the ``_s<seed>`` suffix (one row per method or policy): the final accuracies'
mean ± std and the CO rate of `reports.aggregate.sweep_points`, the CO rate of the monitor points
above, and the training time (``train_time_s``: the monitor excluded), its median against the
reference group's (the unguarded FGSM of the same study).
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Sequence

import numpy as np

from fat_jax.analysis.diagnostics import co_from_start, co_onset
from fat_jax.reports import figures
from fat_jax.reports.aggregate import SWEEP_METRICS, mean_pm_std, mean_std, sweep_points
from fat_jax.run import run_log
from fat_jax.run.runs import Run, load_runs

JSON = 'co_signals.json'
PNG = 'co_signals.png'
_SEED = re.compile(r'_s\d+$')


def _by_step(records: Sequence[dict]) -> list[dict]:
  """`records` sorted by step, the last of each step kept (a resumed run repeats a few)."""
  return sorted({r['step']: r for r in records}.values(), key=lambda r: r['step'])


def steps_per_epoch(run: Run) -> int | None:
  """The run's training steps per epoch, read from its step-stamped records (step / epoch);
  None without any."""
  for name in (run_log.MONITOR, run_log.SIGNALS):
    for r in run_log.read_records(run.workdir, name=name):
      if r.get('epoch'):
        return round(r['step'] / r['epoch'])
  return None


def monitor_points(run: Run) -> list[dict]:
  """{epoch, step, pgd_accuracy, fgsm_accuracy} of every monitor point of `run`, by epoch: the
  within-epoch ones (``monitor.jsonl``) and the epoch ends (``metrics.jsonl``; step = epoch ×
  steps per epoch, None when the run has no step-stamped records)."""
  keys = ('epoch', 'pgd_accuracy', 'fgsm_accuracy')
  points = [{'step': r['step'], **{k: r[k] for k in keys}}
            for r in run_log.read_records(run.workdir, name=run_log.MONITOR)]
  steps = steps_per_epoch(run)
  points += [{'step': None if steps is None else r['epoch'] * steps, **{k: r[k] for k in keys}}
             for r in run.records if 'pgd_accuracy' in r]
  return sorted({p['epoch']: p for p in points}.values(), key=lambda p: p['epoch'])


def onset(run: Run) -> dict | None:
  """The first monitor point ({epoch, step, ...}) at which the run's CO rule holds; None: no
  onset."""
  return _onset(monitor_points(run), run.config.co_monitor)


def _onset(points: Sequence[dict], co_monitor) -> dict | None:
  """`onset` over the monitor `points` under the rule `co_monitor` (drop, gap)."""
  epoch = co_onset(points, drop=co_monitor.drop, gap=co_monitor.gap)
  return None if epoch is None else next(p for p in points if p['epoch'] == epoch)


def signal_records(run: Run) -> list[dict]:
  """The guard's checks of `run` (``signals.jsonl``), by step."""
  return _by_step(run_log.read_records(run.workdir, name=run_log.SIGNALS))


def run_summary(run: Run) -> dict:
  """Per run: its group, seed, CO onset (step; the per-epoch monitor's epoch as
  ``co_epoch``) or CO from the start (`co_from_start` of its monitor points), the guard's
  policy, each signal's first trigger (step or None) and trigger count, the rollbacks' steps
  and the training time."""
  checks = signal_records(run)
  points, cm = monitor_points(run), run.config.co_monitor
  names = list(run.config.get('guard', {}).get('signals', ()))
  firsts = {s: next((r['step'] for r in checks if s in r.get('triggered', ())), None)
            for s in names}
  counts = {s: sum(s in r.get('triggered', ()) for r in checks) for s in names}
  results, first_co = run.results or {}, _onset(points, cm) or {}
  return {'name': run.name, 'group': _SEED.sub('', run.name), 'seed': run.config.get('seed'),
          'finished': run.results is not None, 'co': bool(first_co),
          'co_from_start': not first_co and co_from_start(points, drop=cm.drop, gap=cm.gap),
          'onset_step': first_co.get('step'), 'onset_epoch': first_co.get('epoch'),
          'co_epoch': results.get('co_onset_epoch'),
          'policy': run.config.get('guard', {}).get('policy', 'off'), 'checks': len(checks),
          'first_trigger': firsts, 'triggers': counts,
          'rollback_steps': [r['step'] for r in checks if r.get('rollback')],
          'train_time_s': results.get('train_time_s')}


def signal_study(summaries: Sequence[dict]) -> dict:
  """Per signal, over the finished runs with checks and policy 'off': the lead times over the
  CO runs ({run: onset − first trigger, or None when it never triggered}) and the false alarms
  over the runs without CO ({run: triggers}); with the runs of each kind and those in CO from
  the start (in neither)."""
  logged = [s for s in summaries if s['finished'] and s['checks'] and s['policy'] == 'off']
  co = [s for s in logged if s['co']]
  clean = [s for s in logged if not (s['co'] or s['co_from_start'])]
  names = sorted({n for s in logged for n in s['first_trigger']})
  out = {'co_runs': [s['name'] for s in co], 'no_co_runs': [s['name'] for s in clean],
         'co_from_start_runs': [s['name'] for s in logged if s['co_from_start']],
         'signals': {}}
  for name in names:
    lead = {s['name']: (None if s['first_trigger'].get(name) is None else
                        s['onset_step'] - s['first_trigger'][name]) for s in co}
    alarms = {s['name']: s['triggers'].get(name, 0) for s in clean}
    triggered = [v for v in lead.values() if v is not None]
    mean, std = mean_std(triggered) if triggered else (None, None)
    out['signals'][name] = {
        'lead_steps': lead, 'warned_before': sum(v > 0 for v in triggered),
        'lead_mean': mean, 'lead_std': std,
        'false_alarms': alarms, 'runs_with_alarm': sum(v > 0 for v in alarms.values()),
        'alarms_per_run': float(np.mean(list(alarms.values()))) if alarms else None}
  return out


def comparison(runs: Sequence[Run], summaries: Sequence[dict], reference: str) -> list[dict]:
  """One row per group of finished runs, the reference first (`sweep_points` of the group:
  mean ± std, CO rate), with the CO runs by every monitor point (``co_runs_steps``: an onset or
  CO from the start), the training time and the ratio of its median to the `reference` group's
  (the median: a run slowed by other jobs on a shared machine moves it little)."""
  groups: dict[str, list[tuple[Run, dict]]] = {}
  for run, s in zip(runs, summaries):
    if s['finished']:
      groups.setdefault(s['group'], []).append((run, s))
  if reference not in groups:
    raise ValueError(f'No finished runs of the reference group {reference!r}; groups: '
                     f'{", ".join(sorted(groups)) or "none"}.')
  times = {g: [s['train_time_s'] for _, s in members] for g, members in groups.items()}
  rows = []
  for group, members in sorted(groups.items(), key=lambda g: (g[0] != reference, g[0])):
    point, = sweep_points([run for run, _ in members])
    mean, std = mean_std(times[group])
    rows.append({**point, 'group': group, 'policy': members[0][1]['policy'],
                 'co_runs_steps': sum(s['co'] or s['co_from_start'] for _, s in members),
                 'train_time_mean': mean, 'train_time_std': std,
                 'train_time_median': float(np.median(times[group])),
                 'train_time_range': [min(times[group]), max(times[group])],
                 'time_ratio': float(np.median(times[group]) / np.median(times[reference]))})
  return rows


def tables(study: dict, rows: Sequence[dict]) -> str:
  """Markdown: the lead times, the false alarms and the comparison."""
  n_co, n_clean = len(study['co_runs']), len(study['no_co_runs'])
  out = [f'Lead time (steps from the first trigger to the CO onset) over {n_co} CO runs:', '',
         '| signal | triggered before onset | lead time, mean ± std | per run |',
         '|---|---:|---:|---|']
  for name, s in study['signals'].items():
    per_run = ', '.join('never' if v is None else str(v) for v in s['lead_steps'].values())
    out.append(f"| `{name}` | {s['warned_before']}/{n_co} | "
               f"{mean_pm_std(s['lead_mean'], s['lead_std'], 0)} | {per_run} |")
  out += ['', f'False alarms over {n_clean} runs without CO:', '',
          '| signal | runs with a trigger | triggers per run, mean | per run |',
          '|---|---:|---:|---|']
  for name, s in study['signals'].items():
    out.append(f"| `{name}` | {s['runs_with_alarm']}/{n_clean} | "
               f"{mean_pm_std(s['alarms_per_run'], None, 1)} | "
               f"{', '.join(map(str, s['false_alarms'].values()))} |")
  if study['co_from_start_runs']:
    out += ['', 'In CO from the start (no onset to warn of; in neither table): '
            f"{', '.join(study['co_from_start_runs'])}."]
  out += ['', '| run | method | seeds | clean | FGSM | PGD | CO (epochs) | CO (all points) '
          '| training time (s), median (range) | × reference |',
          '|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    out.append(f"| {r['group']} | {r['method']} | {','.join(map(str, r['seeds']))} | "
               + ' | '.join(mean_pm_std(r[f'{m}_mean'], r[f'{m}_std']) for m in SWEEP_METRICS)
               + f" | {r['co_runs']}/{r['n_runs']} | {r['co_runs_steps']}/{r['n_runs']} | "
               f"{r['train_time_median']:.0f} ({r['train_time_range'][0]:.0f}–"
               f"{r['train_time_range'][1]:.0f}) | {r['time_ratio']:.2f} |")
  return '\n'.join(out)


def plot(study: dict, path: str) -> str:
  """Left: each signal's lead time over the CO runs (one dot per run, the mean as a bar; the
  runs it missed counted above). Right: its false alarms per run without CO (mean bar, one dot
  per run; the runs with any trigger counted above)."""
  names = list(study['signals'])
  fig = figures.new_figure(8.5, 3.4)
  lead_ax, alarm_ax = fig.subplots(1, 2)
  rng = np.random.default_rng(0)
  x = np.arange(len(names))
  for i, name in enumerate(names):
    s = study['signals'][name]
    leads = [v for v in s['lead_steps'].values() if v is not None]
    missed = len(s['lead_steps']) - len(leads)
    lead_ax.scatter(i + rng.uniform(-0.15, 0.15, len(leads)), leads, s=14, color=f'C{i}',
                    zorder=3)
    if leads:
      lead_ax.hlines(np.mean(leads), i - 0.3, i + 0.3, color='k', lw=1.5, zorder=4)
    if missed:
      lead_ax.annotate(f'{missed} never', (i, 1), xycoords=('data', 'axes fraction'),
                       ha='center', va='bottom', fontsize=figures.TICK_PT, color='C3')
    alarms = list(s['false_alarms'].values())
    if alarms:
      alarm_ax.bar(i, np.mean(alarms), color=f'C{i}', alpha=0.5, width=0.6)
      alarm_ax.scatter(i + rng.uniform(-0.15, 0.15, len(alarms)), alarms, s=10, color='k',
                       zorder=3)
      alarm_ax.annotate(f"{s['runs_with_alarm']}/{len(alarms)} runs", (i, 1),
                        xycoords=('data', 'axes fraction'), ha='center', va='bottom',
                        fontsize=figures.TICK_PT)
  lead_ax.axhline(0, color='grey', ls='--', lw=1)
  lead_ax.set_ylabel('steps from first trigger to CO onset', fontsize=figures.TEXT_PT)
  lead_ax.set_title(f"Lead time over {len(study['co_runs'])} CO runs", fontsize=figures.TITLE_PT,
                    pad=12)
  alarm_ax.set_ylabel('triggers per run', fontsize=figures.TEXT_PT)
  alarm_ax.set_title(f"False alarms over {len(study['no_co_runs'])} runs without CO",
                     fontsize=figures.TITLE_PT, pad=12)
  for ax in (lead_ax, alarm_ax):
    ax.set_xticks(x, names, rotation=30, ha='right', fontsize=figures.TICK_PT)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.tick_params(axis='y', labelsize=figures.TICK_PT)
    ax.grid(axis='y', alpha=0.3)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return figures.save(fig, path)


def write(runs: Sequence[Run], out_dir: str, reference: str = 'fgsm') -> str:
  """The study of `runs` into ``out_dir`` (``co_signals.json``, ``co_signals.png``); returns
  the Markdown tables."""
  summaries = [run_summary(r) for r in runs]
  study = signal_study(summaries)
  if not study['signals']:
    raise ValueError('No finished run logged CO signals with guard.policy=off: '
                     f'{", ".join(r.name for r in runs)}.')
  rows = comparison(runs, summaries, reference)
  text = tables(study, rows)
  os.makedirs(out_dir, exist_ok=True)
  run_log.atomic_write_json(os.path.join(out_dir, JSON), {
      'runs': summaries, 'signals': study, 'comparison': rows, 'reference': reference,
      'tables': text})
  plot(study, os.path.join(out_dir, PNG))
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m fat_jax.reports.co_signals',
      description='Lead time and false alarms of each CO signal, and the comparison table.')
  parser.add_argument('runs', nargs='+', help='run directories, or folders of them')
  parser.add_argument('--out', required=True, help='output folder (co_signals.json, .png)')
  parser.add_argument('--reference', default='fgsm',
                      help='the group (run name without _s<seed>) whose training time is 1')
  args = parser.parse_args(argv)
  try:
    print(write(load_runs(args.runs), args.out, args.reference))
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f'fat_jax.reports.co_signals: {e}') from None


if __name__ == '__main__':
  main()
