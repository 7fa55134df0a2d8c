"""The CO-guard study's analysis (`fat_jax.reports.co_signals`) on synthetic run directories
written with the run's own writers, whose lead times, false alarms and comparison are known by
hand."""
import json
import os

import pytest

from configs import quickstart
from fat_jax.reports import co_signals
from fat_jax.run import run_log
from fat_jax.run.runs import load_runs

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
STEPS = 100  # steps per epoch of the synthetic runs
SIGNALS = ('elle_error', 'fgsm_pgd_gap', 'vact')


def write_run(workdir, method, seed, monitor, triggers, policy='off', results=None,
              rollback_at=None, checks=10):
  """A run as training leaves it. `monitor`: {step: (fgsm, pgd)} (multiples of `STEPS` go to
  metrics.jsonl as epoch ends, the others to monitor.jsonl); `triggers`: {step: [signals]} of
  checks every 20 steps up to 20·`checks`; `results`: (clean, fgsm, pgd, co epoch, train time)."""
  config = quickstart.get_config(method)
  config.seed, config.guard.every, config.guard.policy = seed, 20, policy
  config.guard.signals = SIGNALS
  config.eval.monitor_every_steps = 20
  os.makedirs(workdir)
  run_log.write_json(workdir, run_log.CONFIG, json.loads(config.to_json_best_effort()))
  for step, (fgsm, pgd) in sorted(monitor.items()):
    record = {'epoch': step / STEPS, 'clean_accuracy': 0.5, 'fgsm_accuracy': fgsm,
              'pgd_accuracy': pgd}
    if step % STEPS:
      run_log.append_record(workdir, {'step': step, **record}, name=run_log.MONITOR)
    else:
      run_log.append_record(workdir, {**record, 'epoch': step // STEPS})
  for step in range(20, 20 * checks + 1, 20):
    record = {'epoch': step / STEPS, 'step': step, **{s: 0.1 for s in SIGNALS},
              'triggered': triggers.get(step, [])}
    if step == rollback_at:
      record['rollback'] = {'to_step': step - 20, 'switch': 'n_fgsm'}
    run_log.append_record(workdir, record, name=run_log.SIGNALS)
  if results is not None:
    clean, fgsm, pgd, co_epoch, time_s = results
    run_log.write_json(workdir, run_log.RESULTS, {
        'clean_accuracy': clean, 'fgsm_accuracy': fgsm, 'pgd_accuracy': pgd,
        'co_onset_epoch': co_epoch, 'seed': seed, 'train_time_s': time_s})
  return workdir


# (fgsm, pgd) accuracies by step; quickstart's CO rule: drop 0.1 below the best, gap 0.2.
RISING = {20: (0.15, 0.10), 40: (0.35, 0.30), 60: (0.40, 0.35), 80: (0.40, 0.36),
          100: (0.42, 0.38)}
COLLAPSE_120 = {**RISING, 120: (0.45, 0.20), 140: (0.50, 0.10), 200: (0.55, 0.05)}
COLLAPSE_200 = {**RISING, 120: (0.42, 0.36), 140: (0.45, 0.34), 200: (0.55, 0.05)}
DIP_140 = {**RISING, 120: (0.42, 0.36), 140: (0.50, 0.25), 200: (0.45, 0.40)}
STABLE = {**RISING, 120: (0.42, 0.37), 140: (0.43, 0.38), 200: (0.45, 0.40)}
# Never above PGD 0.1, FGSM 0.25 above it at the end: CO from the start, no onset.
FROM_START = {20: (0.05, 0.00), 60: (0.15, 0.06), 100: (0.20, 0.08), 140: (0.25, 0.03),
              200: (0.28, 0.02)}


@pytest.fixture
def study_root(tmp_path):
  root = str(tmp_path / 'eps0.15')
  write_run(f'{root}/fgsm_s0', 'fgsm', 0, COLLAPSE_120,
            {80: ['elle_error'], 100: ['elle_error', 'fgsm_pgd_gap'], 140: ['vact']},
            results=(0.6, 0.5, 0.05, 2, 100.0))
  write_run(f'{root}/fgsm_s1', 'fgsm', 1, COLLAPSE_200, {60: ['elle_error'], 180: ['elle_error']},
            results=(0.6, 0.5, 0.07, 2, 120.0))
  write_run(f'{root}/n_fgsm_s0', 'n_fgsm', 0, STABLE, {100: ['elle_error'], 160: ['elle_error']},
            results=(0.6, 0.45, 0.40, None, 110.0))
  write_run(f'{root}/n_fgsm_s1', 'n_fgsm', 1, STABLE, {}, results=(0.6, 0.45, 0.42, None, 110.0))
  write_run(f'{root}/n_fgsm_s2', 'n_fgsm', 2, STABLE, {40: ['vact']})  # unfinished: left out
  # A collapse within epoch 2 that the epoch ends miss: a CO run by every monitor point.
  write_run(f'{root}/fgsm_rs_s0', 'fgsm_rs', 0, DIP_140, {120: ['fgsm_pgd_gap']},
            results=(0.6, 0.45, 0.40, None, 88.0))
  # A guard that acts: out of the signals' study, in the comparison.
  write_run(f'{root}/fgsm_rollback_s0', 'fgsm', 0, STABLE, {80: ['elle_error']},
            policy='rollback', rollback_at=80, results=(0.6, 0.45, 0.40, None, 55.0))
  return root


def test_onset_is_the_first_monitor_point_of_the_co_rule(study_root):
  runs = {r.name: r for r in load_runs([study_root])}
  assert co_signals.steps_per_epoch(runs['fgsm_s0']) == STEPS
  points = co_signals.monitor_points(runs['fgsm_s0'])
  assert [p['step'] for p in points] == [20, 40, 60, 80, 100, 120, 140, 200]
  assert co_signals.onset(runs['fgsm_s0'])['step'] == 120      # 0.20 < 0.38 − 0.1, gap 0.25
  assert co_signals.onset(runs['fgsm_s1'])['step'] == 200      # the epoch end
  assert co_signals.onset(runs['fgsm_rs_s0'])['step'] == 140   # within the epoch only
  assert co_signals.onset(runs['n_fgsm_s0']) is None


def test_lead_times_and_false_alarms(study_root):
  runs = load_runs([study_root])
  study = co_signals.signal_study([co_signals.run_summary(r) for r in runs])
  assert study['co_runs'] == ['fgsm_rs_s0', 'fgsm_s0', 'fgsm_s1']
  assert study['no_co_runs'] == ['n_fgsm_s0', 'n_fgsm_s1']  # unfinished and guarded left out
  elle, gap, vact = (study['signals'][s] for s in ('elle_error', 'fgsm_pgd_gap', 'vact'))
  assert elle['lead_steps'] == {'fgsm_rs_s0': None, 'fgsm_s0': 40, 'fgsm_s1': 140}
  assert elle['warned_before'] == 2 and elle['lead_mean'] == pytest.approx(90)
  assert elle['lead_std'] == pytest.approx(70.710678)  # ddof = 1
  assert gap['lead_steps'] == {'fgsm_rs_s0': 20, 'fgsm_s0': 20, 'fgsm_s1': None}
  assert vact['lead_steps'] == {'fgsm_rs_s0': None, 'fgsm_s0': -20, 'fgsm_s1': None}
  assert vact['warned_before'] == 0 and vact['lead_std'] is None
  assert elle['false_alarms'] == {'n_fgsm_s0': 2, 'n_fgsm_s1': 0}
  assert elle['runs_with_alarm'] == 1 and elle['alarms_per_run'] == 1.0
  assert vact['runs_with_alarm'] == 0 and vact['alarms_per_run'] == 0.0


def test_co_from_the_start_is_in_neither_table_and_counts_as_co(study_root, capsys):
  write_run(f'{study_root}/fgsm_s2', 'fgsm', 2, FROM_START, {60: ['elle_error']},
            results=(0.5, 0.28, 0.02, None, 100.0))
  runs = load_runs([study_root])
  summaries = [co_signals.run_summary(r) for r in runs]
  study = co_signals.signal_study(summaries)
  assert study['co_runs'] == ['fgsm_rs_s0', 'fgsm_s0', 'fgsm_s1']
  assert study['no_co_runs'] == ['n_fgsm_s0', 'n_fgsm_s1']
  assert study['co_from_start_runs'] == ['fgsm_s2']
  assert 'fgsm_s2' not in study['signals']['elle_error']['lead_steps']
  fgsm = co_signals.comparison(runs, summaries, 'fgsm')[0]
  assert fgsm['seeds'] == [0, 1, 2] and fgsm['co_runs'] == 3 and fgsm['co_runs_steps'] == 3
  assert 'In CO from the start (no onset to warn of; in neither table): fgsm_s2.' in (
      co_signals.tables(study, [fgsm]))


def test_comparison_groups_seeds_and_times_against_the_reference(study_root):
  runs = load_runs([study_root])
  summaries = [co_signals.run_summary(r) for r in runs]
  assert next(s for s in summaries if s['name'] == 'fgsm_rollback_s0')['rollback_steps'] == [80]
  rows = {r['group']: r for r in co_signals.comparison(runs, summaries, 'fgsm')}
  assert list(rows) == ['fgsm', 'fgsm_rollback', 'fgsm_rs', 'n_fgsm']  # the reference first
  fgsm, n_fgsm, rs = rows['fgsm'], rows['n_fgsm'], rows['fgsm_rs']
  assert fgsm['seeds'] == [0, 1] and fgsm['pgd_mean'] == pytest.approx(0.06)
  assert fgsm['co_runs'] == 2 and fgsm['co_runs_steps'] == 2
  assert fgsm['train_time_mean'] == 110 and fgsm['train_time_median'] == 110
  assert fgsm['train_time_range'] == [100, 120] and fgsm['time_ratio'] == 1
  assert n_fgsm['seeds'] == [0, 1] and n_fgsm['co_runs'] == 0 and n_fgsm['time_ratio'] == 1
  assert rs['co_runs'] == 0 and rs['co_runs_steps'] == 1   # the dip within the epoch
  assert rows['fgsm_rollback']['time_ratio'] == pytest.approx(0.5)
  assert rows['fgsm_rollback']['policy'] == 'rollback'
  by_n_fgsm = co_signals.comparison(runs, summaries, 'n_fgsm')
  assert [r['group'] for r in by_n_fgsm] == ['n_fgsm', 'fgsm', 'fgsm_rollback', 'fgsm_rs']
  assert by_n_fgsm[1]['time_ratio'] == 1 and by_n_fgsm[3]['time_ratio'] == pytest.approx(0.8)
  with pytest.raises(ValueError, match="reference group 'pgd_at'"):
    co_signals.comparison(runs, summaries, 'pgd_at')


def test_cli_writes_json_tables_and_figure(study_root, tmp_path, capsys):
  out = str(tmp_path / 'co')
  co_signals.main([study_root, f'--out={out}'])
  text = capsys.readouterr().out
  assert '| `elle_error` | 2/3 | 90 ± 71 | never, 40, 140 |' in text
  assert '| `elle_error` | 1/2 | 1.0 | 2, 0 |' in text
  assert ('| fgsm_rs | fgsm_rs | 0 | 0.600 | 0.450 | 0.400 | 0/1 | 1/1 | 88 (88–88) | 0.80 |'
          in text)
  with open(os.path.join(out, co_signals.PNG), 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  with open(os.path.join(out, co_signals.JSON)) as f:
    saved = json.load(f)
  assert saved['reference'] == 'fgsm' and saved['tables'] == text.rstrip('\n')
  with pytest.raises(SystemExit, match='co_signals: No finished runs of the reference'):
    co_signals.main([study_root, f'--out={out}', '--reference=pgd_at'])
