"""The run directory and the command line: errors in the flags and the config file, storage
failures and checkpoint mismatches as one line (the libraries' tracebacks in a log file),
checkpoint manifests, "unverified" where it is, a lost metrics record trained again, a garbled
JSON file named, and a config.json of a run that never trained replaced."""
import errno
import json
import logging
import os
import resource
import shutil
import subprocess
import sys

import pytest

from fat_jax.errors import one_line
from fat_jax.run import run_log, workdir_lock
from fat_jax.run.checkpoint import CHECKSUM, Checkpointer, directory_digest
from fat_jax.run.train import _last_good, train_and_evaluate
from tests.fixtures import write_idx_dir
from tests.test_reliability import array_file, flip_bytes
from tests.test_train import assert_same_state, final_state, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [sys.executable, os.path.join(ROOT, 'launch.py')]
HINT = '(--traceback shows the full traceback)'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return write_idx_dir(str(tmp_path_factory.mktemp('fmnist')), n_train=64, n_test=16)


@pytest.fixture(scope='module')
def run(data_dir, tmp_path_factory):
  """A finished two-epoch run: (config, workdir, results)."""
  config = tiny_config(data_dir)
  workdir = str(tmp_path_factory.mktemp('run'))
  return config, workdir, train_and_evaluate(config, workdir)


def copy_of(run, tmp_path) -> str:
  workdir = str(tmp_path / 'run')
  shutil.copytree(run[1], workdir)
  return workdir


def launch_flags(data_dir, workdir) -> list[str]:
  """`launch.py` on the quickstart recipe shrunk to the tiny data set."""
  return LAUNCH + ['--config=configs/quickstart.py', f'--workdir={workdir}',
                   f'--config.data.dir={data_dir}', '--config.data.n_train=64',
                   '--config.data.n_test=16', '--config.model.width=4', '--config.num_epochs=1',
                   '--config.batch_size=16', '--config.eval.n=16', '--config.eval.monitor_n=16',
                   '--config.eval.pgd_steps=2', '--config.eval.pgd_restarts=1',
                   '--config.eval.monitor_pgd_steps=2', '--config.progress=False',
                   '--config.report=False']


# --- the command line ----------------------------------------------------------------------

def test_errors_in_the_flags_and_the_config_file_are_one_line(tmp_path):
  (tmp_path / 'syntax.py').write_text('def get_config(:\n')
  (tmp_path / 'raises.py').write_text('import os\n\nraise RuntimeError("no data here")\n')
  quickstart = '--config=configs/quickstart.py'
  cases = {
      'syntax': ([f'--config={tmp_path / "syntax.py"}'],
                 f'the config file {tmp_path / "syntax.py"}, line 1: invalid syntax'),
      'raises': ([f'--config={tmp_path / "raises.py"}'],
                 f'the config file {tmp_path / "raises.py"}, line 3: RuntimeError: no data here'),
      'misspelt': ([quickstart, '--config.num_epoch=1'],
                   "--config.num_epoch: the config has no field 'num_epoch'. "
                   'Did you mean "num_epochs" instead of "num_epoch"?'),
      'missing': (['--config=configs/quickstrat.py'],
                  '--config=configs/quickstrat.py: no such file. Did you mean '
                  'configs/quickstart.py?'),
      'type': ([quickstart, '--config.num_epochs=two'],
               "flag --config.num_epochs=two: invalid literal for int() with base 10: 'two'"),
      'traceback': ([f'--config={tmp_path / "raises.py"}', '--traceback'], None),
  }
  processes = {name: subprocess.Popen(LAUNCH + args + [f'--workdir={tmp_path / "w"}'], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, (args, _) in cases.items()}
  for name, process in processes.items():
    _, err = process.communicate(timeout=300)
    expected = cases[name][1]
    if expected is None:  # --traceback: the full one
      assert process.returncode != 0 and 'Traceback' in err and 'no data here' in err, err
      continue
    assert process.returncode == 1, (name, err)
    assert err.splitlines() == [f'fat_jax: error: {expected}', HINT], (name, err)
  assert not os.path.exists(tmp_path / 'w')


def test_a_full_disk_is_one_line_with_the_tracebacks_in_a_log(data_dir, tmp_path):
  # Files may grow to 8 KiB: config.json and the metrics record fit, the checkpoint does not
  # (EFBIG, as ENOSPC from a full disk, inside orbax's background threads).
  workdir = tmp_path / 'run'
  limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
  full = subprocess.run(launch_flags(data_dir, workdir), cwd=ROOT, capture_output=True,
                        text=True, timeout=600, preexec_fn=limit)
  assert full.returncode == 1
  assert 'Traceback' not in full.stderr and 'Event loop' not in full.stderr, full.stderr[-3000:]
  line, hint = full.stderr.splitlines()[-2:]
  assert hint == HINT
  assert line.startswith(f"fat_jax: storage error: [Errno 27] File too large: '{workdir}/"
                         'checkpoints/1.orbax-checkpoint-tmp/'), line
  assert 'a file size limit (ulimit -f' in line
  log = line.rpartition('(tracebacks: ')[2].rstrip(')')
  try:
    with open(log) as f:
      assert 'Traceback' in f.read()
  finally:
    if not log.startswith(str(tmp_path)):  # a temporary file, once errors.log was full
      os.remove(log)
  assert [r['epoch'] for r in run_log.read_records(str(workdir))] == [1]


def test_a_read_only_workdir_names_the_workdir_not_the_lock(tmp_path, monkeypatch):
  def read_only(path, *args):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
  monkeypatch.setattr(workdir_lock.os, 'open', read_only)
  with pytest.raises(OSError) as error:
    workdir_lock.acquire(str(tmp_path))
  assert one_line(error.value) == (
      f"storage error: [Errno 30] cannot write to the workdir (Read-only file system): "
      f"'{tmp_path}' (the file system is read-only: choose a writable --workdir)")


def test_a_mismatch_is_one_line_and_writes_no_config(run, data_dir, tmp_path):
  workdir = copy_of(run, tmp_path)
  os.remove(os.path.join(workdir, run_log.CONFIG))  # a run of an older fat_jax, say
  wider = subprocess.run(launch_flags(data_dir, workdir) + ['--config.model.width=8'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  assert wider.returncode == 1
  lines = wider.stderr.splitlines()
  assert len(lines) == 2 and 'is intact (its checksum verifies) but does not fit' in lines[0], \
      wider.stderr[-3000:]
  # Only a start that passed every check writes config.json: the corrected rerun resumes.
  assert not os.path.exists(os.path.join(workdir, run_log.CONFIG))


# --- checkpoints ---------------------------------------------------------------------------

def test_an_extra_file_in_a_checkpoint_is_named_and_ignored(run, tmp_path, caplog):
  workdir = copy_of(run, tmp_path)
  with open(os.path.join(workdir, 'checkpoints', '2', '.DS_Store'), 'wb') as f:
    f.write(b'\0' * 16)
  checkpointer = Checkpointer(workdir)
  with caplog.at_level(logging.WARNING, logger='fat_jax'):
    assert checkpointer.verify(2) is True
    assert checkpointer.latest_verified_epoch(set_aside=True) == 2
  checkpointer.close()
  assert 'not written with, ignored: .DS_Store' in caplog.text
  assert 'fails' not in caplog.text
  assert not os.path.exists(os.path.join(workdir, 'checkpoints.corrupt'))


def test_missing_and_changed_checkpoint_files_are_named(run, tmp_path, caplog):
  workdir = copy_of(run, tmp_path)
  checkpoint = os.path.join(workdir, 'checkpoints', '2')
  changed = array_file(checkpoint)
  flip_bytes(changed)
  os.remove(os.path.join(checkpoint, 'state', '_METADATA'))
  checkpointer = Checkpointer(workdir)
  with caplog.at_level(logging.WARNING, logger='fat_jax'):
    assert checkpointer.latest_verified_epoch() == 1
  checkpointer.close()
  assert f'changed: {os.path.relpath(changed, checkpoint)}' in caplog.text
  assert 'missing: state/_METADATA' in caplog.text


def test_the_checksum_is_a_manifest_and_the_older_digest_still_verifies(run, tmp_path):
  workdir = copy_of(run, tmp_path)
  checkpoint = os.path.join(workdir, 'checkpoints', '2')
  with open(os.path.join(checkpoint, CHECKSUM)) as f:
    lines = f.read().splitlines()
  listed = sorted(line.split('  ', 1)[1] for line in lines)
  written = sorted(os.path.relpath(os.path.join(r, n), checkpoint)
                   for r, _, names in os.walk(checkpoint) for n in names if n != CHECKSUM)
  assert listed == written and all(len(line.split('  ', 1)[0]) == 64 for line in lines)
  with open(os.path.join(checkpoint, CHECKSUM), 'w') as f:  # one digest: the older format
    f.write(directory_digest(checkpoint) + '\n')
  checkpointer = Checkpointer(workdir)
  assert checkpointer.verify(2) is True
  flip_bytes(array_file(checkpoint))
  assert checkpointer.verify(2) is False
  checkpointer.close()


def test_a_checkpoint_without_checksum_is_called_unverified(run, tmp_path):
  workdir = copy_of(run, tmp_path)
  checkpointer = Checkpointer(workdir)
  assert ', verified);' in _last_good(checkpointer)
  os.remove(os.path.join(workdir, 'checkpoints', '2', CHECKSUM))
  message = _last_good(checkpointer)
  checkpointer.close()
  assert 'checkpoint of epoch 2' in message and 'unverified: it has no checksum' in message
  assert ', verified' not in message


# --- logs and config.json ------------------------------------------------------------------

def test_a_lost_record_of_a_saved_epoch_is_trained_again(run, tmp_path, caplog):
  config, _, results = run
  workdir = copy_of(run, tmp_path)
  metrics = os.path.join(workdir, run_log.METRICS)
  with open(metrics) as f:
    first, second = f.read().splitlines()
  with open(metrics, 'w') as f:  # epoch 2's record torn, its checkpoint saved
    f.write(first + '\n' + second[:30])
  os.remove(os.path.join(workdir, run_log.RESULTS))
  with caplog.at_level(logging.WARNING, logger='fat_jax'):
    rerun = train_and_evaluate(config, workdir)
  assert 'ends at epoch 1 but the checkpoint of epoch 2 exists' in caplog.text
  assert [r['epoch'] for r in run_log.read_records(workdir)] == [1, 2]  # no hole
  assert run_log.read_records(workdir)[1] | {'train_time_s': 0, 'eval_time_s': 0} == \
      json.loads(second) | {'train_time_s': 0, 'eval_time_s': 0}
  assert_same_state(final_state(config, workdir), final_state(config, run[1]))
  assert rerun['pgd_accuracy'] == results['pgd_accuracy']


def test_a_garbled_json_file_names_the_file_and_the_fix(tmp_path):
  (tmp_path / run_log.CONFIG).write_text('{"model": {"name": "cn')
  with pytest.raises(run_log.CorruptLogError) as error:
    run_log.read_json(str(tmp_path), run_log.CONFIG)
  assert str(error.value).startswith(f'{tmp_path / run_log.CONFIG} is not valid JSON')
  assert 'delete it and rerun training with the config the run was trained with' in \
      str(error.value)
  (tmp_path / run_log.RESULTS).write_text('')
  with pytest.raises(run_log.CorruptLogError, match='delete it and rerun the command'):
    run_log.read_json(str(tmp_path), run_log.RESULTS)


def test_the_config_of_a_run_that_never_trained_is_replaced(data_dir, tmp_path, caplog):
  config = tiny_config(data_dir, num_epochs=1)
  failed = tiny_config(data_dir, num_epochs=1, eps=0.2)
  run_log.write_json(str(tmp_path), run_log.CONFIG, json.loads(failed.to_json_best_effort()))
  with caplog.at_level(logging.INFO, logger='fat_jax'):
    train_and_evaluate(config, str(tmp_path))
  assert 'never trained' in caplog.text
  assert run_log.read_json(str(tmp_path), run_log.CONFIG)['eps'] == 0.1
  with pytest.raises(ValueError, match='different config'):  # now it holds a run
    train_and_evaluate(failed, str(tmp_path))
