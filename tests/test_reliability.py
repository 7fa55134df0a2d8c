"""No silent wrong numbers: verified checkpoints, divergence at the weights, one writer per
workdir, torn log lines, checks at the door, a gradient-free check by default, the recorded
monitor protocol. Each test fails without the guarantee it checks."""
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.evaluate import sanity

from fat_jax.run import run_log
from fat_jax.run.checkpoint import (CHECKSUM, CORRUPT_DIR, CheckpointMismatchError, Checkpointer,
                                CorruptCheckpointError)
from fat_jax.data import load_dataset
from fat_jax.evaluate import evaluate
from fat_jax.methods import init_train_state
from fat_jax.models import build_model
from fat_jax.run.divergence import DivergenceError, check_finite
from fat_jax.run.run_config import check_against_run
from fat_jax.run.train import train_and_evaluate
from fat_jax.run.workdir_lock import LOCK, WorkdirLockedError, acquire, locked
from fat_jax.validation import ConfigError, config_problems
from tests.fixtures import write_idx_dir
from tests.test_apgd import mlp_apply, trained  # noqa: F401
from tests.test_train import assert_same_state, final_state, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCURACIES = ('clean_accuracy', 'fgsm_accuracy', 'pgd_accuracy')


class Messages(logging.Handler):
  """The fat_jax log lines of a block (module-scoped fixtures cannot use caplog)."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())

  def __enter__(self):
    logger = logging.getLogger('fat_jax')
    self.level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not .level: it clears the logger's level cache
    logger.addHandler(self)
    return self

  def __exit__(self, *exc):
    logger = logging.getLogger('fat_jax')
    logger.removeHandler(self)
    logger.setLevel(self.level)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return write_idx_dir(str(tmp_path_factory.mktemp('fmnist')), n_train=64, n_test=16)


@pytest.fixture(scope='module')
def run(data_dir, tmp_path_factory):
  """A finished two-epoch run (batch 24 of 64 examples: 16 left out per epoch)."""
  config = tiny_config(data_dir, batch_size=24)
  workdir = str(tmp_path_factory.mktemp('run'))
  with Messages() as messages:
    results = train_and_evaluate(config, workdir)
  return config, workdir, results, messages.lines


def copy_of(run, tmp_path):  # noqa: F811
  workdir = str(tmp_path / 'run')
  shutil.copytree(run[1], workdir)
  return workdir


def flip_bytes(path: str, count: int = 64) -> None:
  """Invert `count` bytes in the middle of `path`; its size stays the same."""
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    middle = len(data) // 2 - count // 2
    data[middle:middle + count] = bytes(255 - b for b in data[middle:middle + count])
    f.seek(0)
    f.write(data)


def array_file(checkpoint: str) -> str:
  """The largest array data file of a checkpoint (orbax's OCDBT store of process 0)."""
  folder = os.path.join(checkpoint, 'state', 'ocdbt.process_0', 'd')
  return max((os.path.join(folder, name) for name in os.listdir(folder)), key=os.path.getsize)


# --- checkpoints -------------------------------------------------------------------------

def test_corrupted_checkpoint_falls_back_and_reproduces_the_results(run, tmp_path, caplog):  # noqa: F811
  config, _, results, _ = run
  workdir = copy_of(run, tmp_path)
  data_file = array_file(os.path.join(workdir, 'checkpoints', '2'))
  size = os.path.getsize(data_file)
  flip_bytes(data_file)
  assert os.path.getsize(data_file) == size
  checkpointer = Checkpointer(workdir)
  assert checkpointer.verify(2) is False and checkpointer.verify(1) is True
  checkpointer.close()
  with caplog.at_level(logging.WARNING, logger='fat_jax'):
    rerun = train_and_evaluate(config, workdir)
  bad = os.path.join(workdir, 'checkpoints', '2')
  assert any(bad in r.getMessage() and 'checksum' in r.getMessage() for r in caplog.records)
  # Epoch 2 was trained again from epoch 1: the same state and numbers as the uninterrupted run.
  assert_same_state(final_state(config, workdir), final_state(config, run[1]))
  assert {k: rerun[k] for k in ACCURACIES} == {k: results[k] for k in ACCURACIES}
  assert rerun['evaluated_epoch'] == 2
  assert [r['epoch'] for r in run_log.read_records(workdir)] == [1, 2]
  # The corrupted checkpoint is kept aside, not deleted; the new one verifies.
  assert os.path.isdir(os.path.join(workdir, CORRUPT_DIR, '2'))
  checkpointer = Checkpointer(workdir)
  assert checkpointer.verify(2) is True
  checkpointer.close()


def test_evaluation_refuses_a_run_whose_checkpoints_all_fail(run, tmp_path):  # noqa: F811
  workdir = copy_of(run, tmp_path)
  for epoch in (1, 2):
    flip_bytes(array_file(os.path.join(workdir, 'checkpoints', str(epoch))))
  checkpointer = Checkpointer(workdir)
  with pytest.raises(CorruptCheckpointError, match=r'epochs \[1, 2\] fail') as error:
    checkpointer.latest_verified_epoch()
  assert 'delete' not in str(error.value).lower()
  with pytest.raises(CorruptCheckpointError, match='fails its checksum'):
    checkpointer.restore(2, jax.eval_shape(lambda: init_train_state(
        build_model(run[0].model, load_dataset(run[0].data).info), jax.random.key(0))))
  checkpointer.close()


def test_checkpoint_without_checksum_restores_with_a_warning(run, tmp_path, caplog):  # noqa: F811
  workdir = copy_of(run, tmp_path)
  os.remove(os.path.join(workdir, 'checkpoints', '2', CHECKSUM))  # as written by older runs
  checkpointer = Checkpointer(workdir)
  with caplog.at_level(logging.WARNING, logger='fat_jax'):
    assert checkpointer.latest_verified_epoch() == 2
  checkpointer.close()
  assert 'no checksum' in caplog.text


def test_another_model_config_is_a_mismatch_not_corruption(run, tmp_path):  # noqa: F811
  config, workdir, _, _ = run
  wider = tiny_config(config.data.dir, batch_size=24, **{'model.width': 8})
  model = build_model(wider.model, load_dataset(wider.data).info)
  checkpointer = Checkpointer(workdir)
  with pytest.raises(CheckpointMismatchError, match='intact') as error:
    checkpointer.restore(2, jax.eval_shape(lambda: init_train_state(model, jax.random.key(0))))
  checkpointer.close()
  assert 'stored' in str(error.value) and 'delete' not in str(error.value).lower()
  # --mode=eval checks the config first and names the differing fields with both values.
  wider.method.name = 'n_fgsm'
  with pytest.raises(ConfigError) as error:
    check_against_run(wider, workdir)
  message = str(error.value)
  assert 'model.width = 8 here, 4 in the run' in message
  assert "method.name = 'n_fgsm' here, 'fgsm_rs' in the run" in message
  # Where the data lie and how many examples are loaded may change.
  check_against_run(tiny_config('/elsewhere', batch_size=24, **{'data.n_test': 8}), workdir)


# --- divergence ----------------------------------------------------------------------------

def test_divergence_in_the_weights_with_a_finite_loss_is_caught(data_dir, tmp_path):
  # One step per epoch; lr × (1e30)² = inf in float32 from epoch 2 on. Epoch 2's loss is
  # computed before its update, with epoch 1's finite weights: finite. Its update is not.
  config = tiny_config(data_dir, batch_size=64, **{
      'optim.schedule': 'multistep', 'optim.lr_max': 0.01, 'optim.milestones': (1, 1),
      'optim.gamma': 1e30})
  with pytest.raises(DivergenceError, match=r'after epoch 2 .*checkpoint of epoch 1'):
    train_and_evaluate(config, str(tmp_path))
  assert run_log.read_records(str(tmp_path))[-1]['epoch'] == 1
  assert math.isfinite(run_log.read_records(str(tmp_path))[-1]['train_loss'])
  checkpointer = Checkpointer(str(tmp_path))
  assert checkpointer.epochs() == [1] and checkpointer.verify(1)
  checkpointer.close()
  assert not os.path.exists(os.path.join(str(tmp_path), run_log.RESULTS))


def test_every_floating_leaf_is_checked():
  state = {'params': {'w': jnp.ones(3)}, 'opt': ({'mu': jnp.array([0.0, jnp.inf])},),
           'step': jnp.array(3), 'key': jax.random.key(0)}
  check_finite({'params': state['params'], 'step': state['step']}, 'now', lambda: '')
  with pytest.raises(DivergenceError, match=r"\['opt'\]\[0\]\['mu'\].*go back"):
    check_finite(state, 'now', lambda: 'go back')


# --- one writer per workdir ----------------------------------------------------------------

def test_a_second_launch_on_the_same_workdir_fails_at_once(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  command = [sys.executable, os.path.join(ROOT, 'launch.py'), '--config=configs/quickstart.py',
             f'--workdir={workdir}', f'--config.data.dir={data_dir}', '--config.data.n_train=64',
             '--config.data.n_test=16', '--config.model.width=4',
             '--config.num_epochs=2', '--config.batch_size=16', '--config.eval.n=16',
             '--config.eval.monitor_n=16', '--config.eval.pgd_steps=2',
             '--config.eval.pgd_restarts=1', '--config.progress=False', '--config.report=False']
  first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(workdir, LOCK)) and time.time() < deadline:
      assert first.poll() is None, first.communicate()[1][-2000:]
      time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # the first holds the lock however slow the second is
    try:
      second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
      os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=600)
  finally:
    first.kill()
  assert second.returncode == 1
  assert f'in use by pid {first.pid}' in second.stderr and 'Traceback' not in second.stderr
  assert first.returncode == 0, err[-3000:]
  assert [r['epoch'] for r in run_log.read_records(workdir)] == [1, 2]
  assert not os.path.exists(os.path.join(workdir, LOCK))  # released at the end


def test_stale_lock_is_taken_over_and_a_foreign_one_refused(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  lock = tmp_path / LOCK
  lock.write_text(json.dumps({'pid': dead.pid, 'host': socket.gethostname()}))
  with caplog.at_level(logging.WARNING, logger='fat_jax'):
    with locked(str(tmp_path)):
      assert json.loads(lock.read_text())['pid'] == os.getpid()
  assert f'pid {dead.pid}' in caplog.text and 'stale' in caplog.text
  assert not lock.exists()
  lock.write_text(json.dumps({'pid': os.getpid() + 1, 'host': 'another-host'}))
  with pytest.raises(WorkdirLockedError, match='another-host'):
    acquire(str(tmp_path))


# --- logs ----------------------------------------------------------------------------------

def test_a_torn_last_line_of_metrics_is_dropped_on_resume(tmp_path, caplog):
  records = [{'epoch': 1, 'pgd_accuracy': 0.5}, {'epoch': 2, 'pgd_accuracy': 0.4}]
  path = tmp_path / run_log.METRICS
  path.write_text(json.dumps(records[0]) + '\n' + json.dumps(records[1])[:20])  # killed here
  with caplog.at_level(logging.WARNING, logger='fat_jax'):
    assert run_log.read_records(str(tmp_path), up_to_epoch=1) == records[:1]
  assert 'torn' in caplog.text
  run_log.append_record(str(tmp_path), records[1])  # the resumed epoch 2
  assert run_log.read_records(str(tmp_path)) == records
  path.write_text('{"epoch": 1, "pgd_acc\n' + json.dumps(records[1]) + '\n')  # not a torn write
  with pytest.raises(run_log.CorruptLogError, match='line 1'):
    run_log.read_records(str(tmp_path))


def test_records_carry_the_monitor_protocol_and_the_remainder_is_reported(run):  # noqa: F811
  config, workdir, _, messages = run
  protocol = {'n': 16, 'eps': config.eps, 'pgd_steps': 2, 'pgd_restarts': 1,
              'pgd_step_size': config.eps / 4, 'batch_size': 16, 'seed': 0}
  assert [r['monitor'] for r in run_log.read_records(workdir)] == [protocol] * 2
  left_out = [m for m in messages if 'does not divide' in m]
  assert len(left_out) == 1 and 'leaves out 16' in left_out[0]


def test_monitor_settings_changed_on_resume_are_recorded_and_warned(run, tmp_path, caplog):  # noqa: F811
  config, _, _, _ = run
  workdir = copy_of(run, tmp_path)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '2'))  # interrupted during epoch 2
  os.remove(os.path.join(workdir, run_log.RESULTS))
  changed = tiny_config(config.data.dir, batch_size=24, **{'eval.monitor_pgd_steps': 1})
  with caplog.at_level(logging.WARNING, logger='fat_jax'):
    train_and_evaluate(changed, workdir)
  assert [r['monitor']['pgd_steps'] for r in run_log.read_records(workdir)] == [2, 1]
  assert 'monitor settings changed' in caplog.text


# --- checks at the door ----------------------------------------------------------------------

@pytest.mark.parametrize('field, value, match', [
    ('eps', 8.0, r'eps=8.0 is outside \[0, 1\].*8/255'),
    ('eps', float('nan'), 'eps=nan is not finite'),
    ('eval.eps', -0.1, 'eval.eps=-0.1 is negative'),
    ('eval.eps', float('inf'), 'eval.eps=inf is not finite'),
    ('data.n_train', -1, 'data.n_train=-1 is negative'),
    ('data.n_test', -1, 'data.n_test=-1 is negative'),
    ('eval.n', -5, 'eval.n=-5 is negative'),
    ('batch_size', 0, 'batch_size=0 must be positive'),
    ('eval.batch_size', 0, 'eval.batch_size=0 must be positive'),
    ('optim.lr_max', float('nan'), 'optim.lr_max=nan is not finite'),
])
def test_bad_config_values_fail_before_any_data_is_loaded(field, value, match, tmp_path):
  # No data set exists at data.dir: any later check would fail with DatasetNotFoundError.
  config = tiny_config(str(tmp_path / 'missing'), **{field: value})
  with pytest.raises(ConfigError, match=match) as error:
    train_and_evaluate(config, str(tmp_path / 'run'))
  assert len(str(error.value).splitlines()) == 1
  assert not os.path.exists(tmp_path / 'run')


def test_eps_in_pixel_units_warns_and_mistakes_are_listed_together(caplog):
  config = tiny_config('', eps=0.6)
  with caplog.at_level(logging.WARNING, logger='fat_jax'):
    assert config_problems(config) == []
  assert 'eps=0.6 is more than 0.5' in caplog.text and '0.6/255 = 0.002353' in caplog.text
  config = tiny_config('', eps=8.0, batch_size=-1, **{'eval.n': -1})
  assert len(config_problems(config)) == 3


def test_evaluate_rejects_labels_outside_the_classes_and_nan(trained):  # noqa: F811
  params, x, y = trained
  y = np.asarray(y)
  kw = dict(suite='custom', attacks=['fgsm'], checks=False, progress=False, batch_size=64)
  with pytest.raises(ConfigError, match=r'labels are not classes 0..9'):
    evaluate(mlp_apply, params, {}, x, np.where(np.arange(len(y)) < 5, 10, y), eps=0.1, **kw)
  with pytest.raises(ConfigError, match='eps=nan is not finite'):
    evaluate(mlp_apply, params, {}, x, y, eps=float('nan'), **kw)
  x_nan = np.array(x)
  x_nan[3] = np.nan
  with pytest.raises(ConfigError, match='1 inputs hold NaN or inf'):
    evaluate(mlp_apply, params, {}, x_nan, y, eps=0.1, **kw)


def test_launch_prints_one_line_errors(data_dir, run, tmp_path):  # noqa: F811
  base = [sys.executable, os.path.join(ROOT, 'launch.py'), '--config=configs/quickstart.py',
          f'--config.data.dir={data_dir}', '--config.progress=False']
  bad = subprocess.run(base + [f'--workdir={tmp_path / "a"}', '--config.eps=8'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and 'eps=8.0 is outside [0, 1]' in bad.stderr
  assert 'Traceback' not in bad.stderr
  verbose = subprocess.run(base + [f'--workdir={tmp_path / "a"}', '--config.eps=8',
                                   '--traceback'], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
  assert verbose.returncode != 0 and 'Traceback' in verbose.stderr
  (tmp_path / 'file').write_text('')  # a workdir that is a file: a storage error
  storage = subprocess.run(base + [f'--workdir={tmp_path / "file"}'], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
  assert storage.returncode == 1 and 'Traceback' not in storage.stderr
  assert 'storage error: [Errno' in storage.stderr and len(storage.stderr.splitlines()) == 2
  # --mode=eval with a recipe that contradicts the run's config.json.
  config, workdir, _, _ = run
  eval_run = subprocess.run(
      base + [f'--workdir={workdir}', '--mode=eval', '--config.model.name=cnn',
              '--config.model.width=8', '--config.model.depth=2', '--config.model.batchnorm=True',
              '--config.data.name=fashion_mnist', '--config.eps=0.1'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert eval_run.returncode == 1 and 'Traceback' not in eval_run.stderr
  assert 'model.width = 8 here, 4 in the run' in eval_run.stderr
  assert "method.name = 'fgsm' here, 'fgsm_rs' in the run" in eval_run.stderr


# --- a gradient-free check by default ----------------------------------------------------------

@jax.custom_vjp
def scramble(x):
  return x


def _scramble_fwd(x):
  return x, None


def _scramble_bwd(_, g):
  """A non-zero but wrong input gradient: coordinates shifted by one and negated."""
  flat = g.reshape(len(g), -1)
  return (-jnp.roll(flat, 1, axis=1).reshape(g.shape),)


scramble.defvjp(_scramble_fwd, _scramble_bwd)


def scrambled_apply(params, state, x, train):
  return mlp_apply(params, state, scramble(x), train)


def test_default_checks_catch_scrambled_gradients(trained):  # noqa: F811
  params, x, y = trained
  result = evaluate(scrambled_apply, params, {}, x, y, suite='pgd', eps=0.1, pgd_steps=10,
                    pgd_restarts=1, batch_size=64, progress=False)
  assert result['checks']['zero_gradients']['status'] == sanity.PASS  # gradients are non-zero
  square = result['checks']['square']
  assert square['status'] == sanity.WARN and square['drop'] > 0.2
  assert result['checks']['gradient_free']['status'] == sanity.PASS
  unchecked = evaluate(scrambled_apply, params, {}, x, y, suite='pgd', eps=0.1, pgd_steps=10,
                       pgd_restarts=1, batch_size=64, progress=False, square_check=False)
  assert unchecked['checks']['gradient_free']['status'] == sanity.WARN
