"""End-to-end training on tiny IDX fixtures: determinism, resume, errors, divergence."""
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from fat_jax.analysis.diagnostics import co_from_start, co_onset
from fat_jax.analysis.evaluators import EVALUATORS
from fat_jax.config import default_config
from fat_jax.data import DatasetNotFoundError, load_dataset
from fat_jax.methods import init_train_state, make_train_step, resolve_method
from fat_jax.models import build_model
from fat_jax.run import run_log
from fat_jax.run.checkpoint import Checkpointer
from fat_jax.run.runs import Run
from fat_jax.run.train import DivergenceError, make_schedule, train_and_evaluate
from tests.fixtures import write_idx_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return write_idx_dir(str(tmp_path_factory.mktemp('fmnist')), n_train=64, n_test=16)


def tiny_config(data_dir, method='fgsm_rs', **overrides):
  c = default_config()
  c.data.name, c.data.dir = 'fashion_mnist', data_dir
  c.model.name, c.model.width, c.model.depth, c.model.batchnorm = 'cnn', 4, 2, True
  c.method.name = method
  c.eps, c.batch_size, c.num_epochs = 0.1, 16, 2
  c.eval.n, c.eval.monitor_n, c.eval.batch_size = 16, 16, 16
  c.eval.pgd_steps, c.eval.pgd_restarts, c.eval.monitor_pgd_steps = 2, 1, 2
  c.progress = c.report = False
  for key, value in overrides.items():
    section, _, field = key.rpartition('.')
    (c[section] if section else c)[field] = value
  return c


def final_state(config, workdir):
  """The state of the last checkpoint in `workdir`."""
  data = load_dataset(config.data)
  like = init_train_state(build_model(config.model, data.info), jax.random.key(0))
  checkpointer = Checkpointer(workdir)
  try:
    return checkpointer.restore(checkpointer.latest_epoch(), like)
  finally:
    checkpointer.close()


def assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_same_seed_same_bits_and_resume_after_interruption(data_dir, tmp_path):
  config = tiny_config(data_dir)
  first = train_and_evaluate(config, str(tmp_path / 'a'))
  train_and_evaluate(config, str(tmp_path / 'b'))
  reference = final_state(config, str(tmp_path / 'a'))
  assert_same_state(reference, final_state(config, str(tmp_path / 'b')))
  assert int(reference.step) == 2 * 4
  # Interrupt run b during epoch 2: its epoch-2 checkpoint and later files never happened.
  b = str(tmp_path / 'b')
  shutil.rmtree(os.path.join(b, 'checkpoints', '2'))
  os.remove(os.path.join(b, run_log.RESULTS))
  resumed = train_and_evaluate(config, b)
  assert_same_state(reference, final_state(config, b))
  assert [r['epoch'] for r in run_log.read_records(b)] == [1, 2]
  assert all(set(r['vact']) == set(r['vact_pgd']) == {'A', 'B'} for r in run_log.read_records(b))
  assert all(r['fosc_fgsm'] >= 0 and r['fosc_pgd'] >= 0 for r in run_log.read_records(b))
  assert resumed['pgd_accuracy'] == first['pgd_accuracy']
  assert set(first) >= {'clean_accuracy', 'fgsm_accuracy', 'pgd_accuracy', 'pgd_step_size',
                        'co_onset_epoch', 'evaluated_epoch', 'n', 'eps'}
  assert first['clean_accuracy'] >= max(first['fgsm_accuracy'], first['pgd_accuracy'])
  flags = np.load(os.path.join(b, run_log.RESULT_FLAGS))
  assert flags['pgd'].shape == (16,)


def test_composed_method_trains_and_logs_component_statistics(data_dir, tmp_path):
  # N-FGSM init + AAER + GradAlign + LAP in one method.
  config = tiny_config(data_dir, method='lap', num_epochs=1, **{
      'method.lap.beta': 0.01, 'method.aaer.lambda1': 1.0, 'method.aaer.lambda2': 1.5,
      'method.aaer.lambda3': 0.15, 'method.gradalign.lam': 0.2})
  train_and_evaluate(config, str(tmp_path))
  record = run_log.read_records(str(tmp_path))[0]
  assert 0.0 <= record['train_aaer_aae_fraction'] <= 1.0
  assert -1.0 <= record['train_gradalign_cos'] <= 1.0
  assert len(record['train_lap_norm']) == 3  # cnn depth 2: two convs + the linear layer
  assert record['train_loss'] >= record['train_ce']


def test_robustness_mode_reproduces_the_final_evaluation(data_dir, tmp_path):
  # The loop's final evaluation is the `robustness` evaluator on its live state: the mode, on
  # the stored checkpoint, gives results.json's numbers and per-point flags.
  results = train_and_evaluate(tiny_config(data_dir, num_epochs=1), str(tmp_path))
  report = EVALUATORS['robustness'].run(Run.open(str(tmp_path)))
  assert report['evaluated_epoch'] == results['evaluated_epoch'] == 1
  for key in ('clean_accuracy', 'fgsm_accuracy', 'pgd_accuracy', 'vact', 'fosc_pgd', 'n'):
    assert report[key] == results[key], key
  stored = run_log.read_json(str(tmp_path), 'robustness_epoch1.json')
  assert stored['pgd_accuracy'] == results['pgd_accuracy']
  final = np.load(os.path.join(str(tmp_path), run_log.RESULT_FLAGS))
  again = np.load(os.path.join(str(tmp_path), 'robustness_epoch1_flags.npz'))
  for kind in ('clean', 'fgsm', 'pgd'):
    np.testing.assert_array_equal(final[kind], again[kind])


def test_resume_with_another_config_is_refused(data_dir, tmp_path):
  train_and_evaluate(tiny_config(data_dir, num_epochs=1), str(tmp_path))
  with pytest.raises(ValueError, match='different config'):
    train_and_evaluate(tiny_config(data_dir, num_epochs=1, eps=0.2), str(tmp_path))


def test_fields_added_since_the_run_started_do_not_block_resuming(data_dir, tmp_path):
  config = tiny_config(data_dir, num_epochs=1)
  train_and_evaluate(config, str(tmp_path))
  stored = run_log.read_json(str(tmp_path), run_log.CONFIG)
  del stored['model']['dtype'], stored['method']['co']['percent']  # as written by an older fat_jax
  run_log.write_json(str(tmp_path), run_log.CONFIG, stored)
  train_and_evaluate(config, str(tmp_path))  # resumes (nothing left to train)
  config.model.dtype = 'bfloat16'  # a new field away from its default is a different run
  with pytest.raises(ValueError, match=r"different config \(sections \['model'\]\)"):
    train_and_evaluate(config, str(tmp_path))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  # lr × 1e30 from epoch 2 on: epoch 1 trains, epoch 2 overflows.
  config = tiny_config(data_dir, **{'optim.schedule': 'multistep', 'optim.lr_max': 0.01,
                                    'optim.milestones': (1,), 'optim.gamma': 1e30})
  with pytest.raises(DivergenceError, match='epoch 2.*checkpoint of epoch 1'):
    train_and_evaluate(config, str(tmp_path))
  checkpointer = Checkpointer(str(tmp_path))
  assert checkpointer.epochs() == [1]
  checkpointer.close()


def test_co_early_stop_evaluates_the_last_good_epoch(data_dir, tmp_path):
  # Thresholds below any possible accuracy change: CO is flagged at the second epoch.
  config = tiny_config(data_dir, num_epochs=3, **{'co_monitor.drop': -1.0, 'co_monitor.gap': -1.0,
                                                  'co_monitor.early_stop': True})
  results = train_and_evaluate(config, str(tmp_path))
  assert results['co_onset_epoch'] == 2 and results['evaluated_epoch'] == 1
  assert [r['co_detected'] for r in run_log.read_records(str(tmp_path))] == [False, True]
  checkpointer = Checkpointer(str(tmp_path))
  assert checkpointer.epochs() == [1]
  checkpointer.close()


@pytest.mark.parametrize('override, error, match', [
    ({'method.name': 'fgsm_xl'}, ValueError, 'Unknown method'),
    ({'eps': -0.1}, ValueError, 'eps'),
    ({'data.name': 'cifar10', 'data.dir': ''}, DatasetNotFoundError, 'cifar-10-python.tar.gz'),
    ({'batch_size': 4096}, ValueError, 'exceeds'),
])
def test_bad_configs_fail_clearly(data_dir, tmp_path, override, error, match):
  with pytest.raises(error, match=match):
    train_and_evaluate(tiny_config(data_dir, **override), str(tmp_path))


def test_train_step_jit_matches_eager(data_dir):
  config = tiny_config(data_dir, method='n_fgsm')
  data = load_dataset(config.data)
  model = build_model(config.model, data.info)
  step = make_train_step(model, resolve_method(config.method, config.eps),
                         make_schedule(config, 4), weight_decay=5e-4, augment_mode='none',
                         key=jax.random.key(1))
  state = init_train_state(model, jax.random.key(0))
  state = state._replace(step=state.step + 3)  # lr > 0
  batch = data.train_images[:16], data.train_labels[:16], np.arange(16)
  eager, m_eager = step(state, *batch)
  jitted, m_jit = jax.jit(step)(state, *batch)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
  assert float(m_eager['loss']) == pytest.approx(float(m_jit['loss']), rel=1e-5)


def test_co_onset_rule():
  rec = lambda e, fgsm, pgd: {'epoch': e, 'fgsm_accuracy': fgsm, 'pgd_accuracy': pgd}
  stable = [rec(1, 0.5, 0.40), rec(2, 0.55, 0.42), rec(3, 0.6, 0.45)]
  assert co_onset(stable) is None
  collapse = stable + [rec(4, 0.7, 0.30), rec(5, 0.85, 0.10), rec(6, 0.9, 0.02)]
  assert co_onset(collapse) == 5     # 0.10 < 0.45 − 0.2 and FGSM 0.85 ≫ PGD
  # A drop in PGD accuracy together with FGSM accuracy is not CO (e.g. divergence).
  assert co_onset(stable + [rec(4, 0.12, 0.05)]) is None


def test_co_from_start_rule():
  rec = lambda e, fgsm, pgd: {'epoch': e, 'fgsm_accuracy': fgsm, 'pgd_accuracy': pgd}
  never_robust = [rec(1, 0.2, 0.05), rec(2, 0.3, 0.08), rec(3, 0.3, 0.01)]
  assert co_onset(never_robust, drop=0.1) is None
  assert co_from_start(never_robust, drop=0.1)               # 0.08 ≤ 0.1, 0.29 > 0.2
  assert not co_from_start(never_robust, drop=0.05)          # it rose above the drop
  assert not co_from_start(never_robust[:1], drop=0.1)       # FGSM only 0.15 above PGD
  assert not co_from_start([rec(1, 0.1, 0.05), rec(2, 0.12, 0.02)], drop=0.1)  # no gap: chance
  assert not co_from_start([])


def test_launch_runs_a_config_and_rejects_typos(data_dir, tmp_path):
  base = [sys.executable, os.path.join(ROOT, 'launch.py'), '--config=configs/quickstart.py',
          f'--workdir={tmp_path}', f'--config.data.dir={data_dir}', '--config.data.n_train=32',
          '--config.data.n_test=16', '--config.model.width=4', '--config.num_epochs=1',
          '--config.batch_size=16', '--config.eval.n=16', '--config.eval.monitor_n=16',
          '--config.eval.pgd_steps=2', '--config.eval.pgd_restarts=1', '--config.progress=False']
  typo = subprocess.run(base + ['--config.methd.name=fgsm'], cwd=ROOT, capture_output=True,
                        text=True)
  assert typo.returncode != 0 and 'methd' in typo.stderr
  done = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Final (epoch 1' in done.stderr
  assert os.path.join(str(tmp_path), run_log.REPORT) in done.stdout  # the end-of-run summary
  assert os.path.isfile(os.path.join(str(tmp_path), run_log.REPORT))  # launch.py wrote it
  assert run_log.read_json(str(tmp_path), run_log.RESULTS)['evaluated_epoch'] == 1
