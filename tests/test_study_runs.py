"""scripts/study_runs.py: a study's runs go `jobs` at a time, a failed one is retried once, a
finished one's record (its small files, no checkpoints) is kept, and a run with a kept record
is not run again — on a fresh checkout too, where the runs' folder is empty."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'scripts'))
import study_runs  # noqa: E402  pylint: disable=wrong-import-position

# A stand-in for launch.py: counts its calls in the workdir, fails on the first call when asked
# to, else writes a run's files (a checkpoint too, which the record leaves out).
FAKE_RUN = '''
import os, sys
workdir, fail_once = sys.argv[1], sys.argv[2] == '1'
os.makedirs(os.path.join(workdir, 'checkpoints'), exist_ok=True)
calls = os.path.join(workdir, 'calls')
n = len(open(calls).read()) if os.path.exists(calls) else 0
open(calls, 'a').write('x')
if fail_once and n == 0:
  sys.exit(3)
for name in ('config.json', 'metrics.jsonl', 'results.json'):
  open(os.path.join(workdir, name), 'w').write(name)
open(os.path.join(workdir, 'checkpoints', '1'), 'w').write('weights')
'''


def rows(tmp_path, names, fail_once=()):
  return [(str(tmp_path / 'runs' / name),
           [sys.executable, '-c', FAKE_RUN, str(tmp_path / 'runs' / name),
            '1' if name in fail_once else '0']) for name in names]


def calls(tmp_path, name):
  return len((tmp_path / 'runs' / name / 'calls').read_text())


def test_records_are_kept_and_a_kept_run_is_not_run_again(tmp_path):
  records = tmp_path / 'records'
  study_runs.run_all(rows(tmp_path, ['a_s0', 'a_s1', 'b_s0'], fail_once={'a_s1'}),
                     str(records), jobs=2)
  for name in ('a_s0', 'a_s1', 'b_s0'):
    assert sorted(os.listdir(records / name)) == ['config.json', 'metrics.jsonl',
                                                  'results.json']
  assert (calls(tmp_path, 'a_s0'), calls(tmp_path, 'a_s1')) == (1, 2)  # a_s1 retried once
  times = (records / study_runs.TIMES).read_text().splitlines()
  assert sorted(line.split('\t')[:2][0] for line in times) == ['a_s0', 'a_s1', 'a_s1', 'b_s0']
  assert [line.split('\t')[1] for line in times if line.startswith('a_s1')] == ['3', '0']

  # A fresh checkout: the records are there, the runs' folder is not.
  for name in ('a_s0', 'a_s1', 'b_s0'):
    os.remove(tmp_path / 'runs' / name / 'calls')
  study_runs.run_all(rows(tmp_path, ['a_s0', 'a_s1', 'b_s0', 'b_s1']), str(records))
  assert not (tmp_path / 'runs' / 'a_s0' / 'calls').exists()
  assert calls(tmp_path, 'b_s1') == 1 and (records / 'b_s1' / 'results.json').exists()


def test_a_finished_run_without_its_record_is_recorded_not_rerun(tmp_path):
  (row,) = rows(tmp_path, ['a_s0'])
  os.makedirs(row[0])
  for name in ('config.json', 'results.json'):
    (tmp_path / 'runs' / 'a_s0' / name).write_text(name)
  study_runs.run_all([row], str(tmp_path / 'records'))
  assert not (tmp_path / 'runs' / 'a_s0' / 'calls').exists()
  assert sorted(os.listdir(tmp_path / 'records' / 'a_s0')) == ['config.json', 'results.json']


def test_dry_run_prints_the_commands_only(tmp_path, capsys):
  study_runs.run_all(rows(tmp_path, ['a_s0']), str(tmp_path / 'records'), dry_run=True)
  assert 'a_s0' in capsys.readouterr().out
  assert not (tmp_path / 'records').exists() and not (tmp_path / 'runs').exists()


def test_select_picks_runs_in_the_order_given_and_names_an_unknown_one(tmp_path):
  all_rows = rows(tmp_path, ['a_s0', 'a_s1', 'b_s0'])
  assert study_runs.select(all_rows, None) == all_rows
  assert study_runs.select(all_rows, 'b_s0,a_s0') == [all_rows[2], all_rows[0]]
  with pytest.raises(ValueError, match='No run c_s0 in this study; its runs: a_s0, a_s1, b_s0'):
    study_runs.select(all_rows, 'a_s0,c_s0')
