"""Weight EMA (`optim.WeightAverage`) of any method: the rule of
``gowal21uncovering/utils/watrain.py`` (imrahulr/adversarial_robustness_pytorch) step by step
against a NumPy transcription, a step with it off left unchanged, checkpoints, kill and resume,
and the evaluations that use it."""
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fat_jax import optim

from fat_jax.analysis import evaluators
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS, load_dataset
from fat_jax.evaluate import PGDSettings, evaluate_robustness
from fat_jax.run import run_log
from fat_jax.run.checkpoint import CheckpointMismatchError, Checkpointer
from fat_jax.run.runs import Run
from fat_jax.methods import (evaluated_weights, init_train_state, make_train_step,
                             resolve_method)
from fat_jax.models import build_model
from fat_jax.parallel import make_data_mesh
from fat_jax.run.train import train_and_evaluate
from fat_jax.validation import ConfigError, validate_config
from tests.fixtures import write_idx_dir

EPS, STEPS, BATCH = 0.1, 6, 8


def official_decay(global_step, decay_rate, warmup_steps):
  """``ema_update``'s decay, transcribed (Python floats, dynamic_decay=True)."""
  factor = int(global_step >= warmup_steps)
  delta = global_step - warmup_steps
  decay = min(decay_rate, (1. + delta) / (10. + delta)) if 10. + delta != 0 else decay_rate
  return decay * factor


def official_update(average, params, decay):
  """``p_swa *= decay; p_swa += p * (1 - decay)`` on float32 tensors (torch casts the Python
  scalars to the tensors' float32)."""
  return {k: a * np.float32(decay) + params[k] * np.float32(1 - decay)
          for k, a in average.items()}


def flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize('decay, warmup', [(0.995, 0.0), (0.9, 2.5), (0.5, 7.0), (0.999, 3910.0)])
def test_decay_follows_the_official_rule(decay, warmup):
  ema = optim.WeightAverage(decay, warmup)
  steps = np.arange(1, 4000)
  ours = np.asarray(jax.jit(jax.vmap(ema.decay_at))(steps))
  official = np.array([official_decay(int(t), decay, warmup) for t in steps])
  np.testing.assert_array_equal(ours, official.astype(np.float32))  # float32 of the official
  assert np.all(ours[steps < warmup] == 0)   # a copy of the weights during the warm-up


def tiny_step(ema):
  cfg = ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2, batchnorm=True))
  model = build_model(cfg, DATASET_INFOS['fashion_mnist'])
  c = default_config().method
  c.name = 'fgsm_rs'
  method = resolve_method(c, EPS)
  schedule = optim.Schedule('cyclic', 0.2, total_steps=STEPS, steps_per_epoch=2)
  step = jax.jit(make_train_step(model, method, schedule, weight_decay=5e-4, augment_mode='none',
                                 key=jax.random.key(1), ema=ema))
  state = init_train_state(model, jax.random.key(0), ema=ema)
  k1, k2 = jax.random.split(jax.random.key(2))
  images = jax.random.randint(k1, (STEPS, BATCH, 28, 28, 1), 0, 256).astype(jnp.uint8)
  labels = jax.random.randint(k2, (STEPS, BATCH), 0, 10)
  return step, state, images, labels


def run_steps(ema):
  step, ts, images, labels = tiny_step(ema)
  states = [ts]
  for t in range(STEPS):
    ts, _ = step(ts, images[t], labels[t], jnp.arange(BATCH))
    states.append(ts)
  return states


DECAY, WARMUP = 0.9, 2.5   # steps 1, 2 copy; from step 3 d_t = min(0.9, (1 + δ)/(10 + δ))


@pytest.fixture(scope='module')
def trajectories():
  """The states after each of `STEPS` steps, without and with the EMA."""
  return run_steps(None), run_steps(optim.WeightAverage(DECAY, WARMUP))


def test_ema_follows_the_rule_step_by_step(trajectories):
  decay, warmup = DECAY, WARMUP
  states = trajectories[1]
  average = flat(states[0].params)
  assert all(np.array_equal(average[k], v) for k, v in flat(states[0].ema).items())
  for t in range(1, STEPS + 1):
    params = flat(states[t].params)
    average = official_update(average, params, official_decay(t, decay, warmup))
    ours = flat(states[t].ema)
    assert ours.keys() == average.keys()
    for k in average:
      np.testing.assert_allclose(ours[k], average[k], rtol=1e-6, atol=1e-7, err_msg=f'{k} t={t}')
      if t < warmup:
        np.testing.assert_array_equal(ours[k], params[k])
  moved = [not np.allclose(ours[k], params[k], atol=1e-6) for k in params]
  assert sum(moved) >= len(params) // 2   # the average lags the weights after the warm-up


def test_ema_leaves_training_unchanged_and_off_is_the_plain_state(trajectories):
  plain, averaged = trajectories[0][-1], trajectories[1][-1]
  assert plain.ema == {}
  for before, after in zip(*trajectories):   # every step, not just the last
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after._replace(ema={}))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert evaluated_weights(plain)[0] == 'model' and evaluated_weights(averaged)[0] == 'ema'


def test_state_and_step_must_agree_on_the_ema():
  step, averaged, images, labels = tiny_step(optim.WeightAverage(0.9))
  with pytest.raises(ValueError, match='same ema'):   # raised while tracing
    step(averaged._replace(ema={}), images[0], labels[0], jnp.arange(BATCH))


def test_checkpoint_keeps_the_ema_apart(tmp_path):
  ema = optim.WeightAverage(0.9)
  _, ts, _, _ = tiny_step(ema)
  ts = ts._replace(ema=jax.tree.map(lambda w: w + 1.0, ts.ema))
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(1, ts)
  checkpointer.save(2, ts._replace(ema={}))
  assert checkpointer.has_ema(1) and not checkpointer.has_ema(2)
  full = checkpointer.restore(1, ts)
  model_only = checkpointer.restore(1, ts._replace(ema={}))
  with pytest.raises(CheckpointMismatchError):   # a checkpoint without an EMA cannot fill one
    checkpointer.restore(2, ts)
  checkpointer.close()
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(ts)):
    np.testing.assert_array_equal(a, b)
  assert model_only.ema == {}
  for a, b in zip(jax.tree.leaves(model_only.params), jax.tree.leaves(ts.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('value, ok', [(0.0, True), (0.995, True), (1.0, False), (-0.1, False),
                                       (float('nan'), False)])
def test_ema_decay_must_be_in_0_1(value, ok):
  config = default_config()
  config.ema_decay = value
  if ok:
    validate_config(config)
  else:
    with pytest.raises(ConfigError, match='ema_decay'):
      validate_config(config)


# ---------------------------------------------------------------------------
# The training loop, its resumption and the evaluations.

@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return write_idx_dir(str(tmp_path_factory.mktemp('fmnist')), n_train=64, n_test=16)


def ema_config(data_dir):
  c = default_config()
  c.data.name, c.data.dir = 'fashion_mnist', data_dir
  c.model.name, c.model.width, c.model.depth, c.model.batchnorm = 'cnn', 4, 2, True
  c.method.name = 'fgsm_rs'
  c.eps, c.batch_size, c.num_epochs = 0.1, 16, 2
  c.eval.n, c.eval.monitor_n, c.eval.batch_size = 16, 16, 16
  c.eval.pgd_steps, c.eval.pgd_restarts, c.eval.monitor_pgd_steps = 2, 1, 2
  c.progress = c.report = False
  c.ema_decay, c.ema_warmup = 0.9, 0.25   # 8 steps: W = 2
  return c


def restored(config, workdir):
  return Run.open(workdir, config).restore()[1]


def test_ema_survives_kill_and_resume_and_is_what_is_evaluated(data_dir, tmp_path, monkeypatch):
  config = ema_config(data_dir)
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  results = train_and_evaluate(config, a)
  # b: run a killed during epoch 2 (its epoch-2 checkpoint and results never written), resumed.
  shutil.copytree(a, b)
  shutil.rmtree(os.path.join(b, 'checkpoints', '2'))
  os.remove(os.path.join(b, run_log.RESULTS))
  resumed = train_and_evaluate(config, b)
  straight, again = restored(config, a), restored(config, b)
  assert int(straight.step) == 8 and straight.ema
  for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(straight.ema),
                                                      jax.tree.leaves(straight.params)))
  for key in ('clean_accuracy', 'fgsm_accuracy', 'pgd_accuracy', 'vact', 'evaluated_weights'):
    assert resumed[key] == results[key], key

  # The final evaluation is that of the EMA params (with the model's BatchNorm statistics).
  assert results['evaluated_weights'] == 'ema'
  assert {r['evaluated_weights'] for r in run_log.read_records(a)} == {'ema'}
  data = load_dataset(config.data)
  model = build_model(config.model, data.info)
  settings = PGDSettings(eps=config.eps, steps=2, restarts=1, step_size=0.25 * config.eps)
  direct = {name: evaluate_robustness(
      model, params, straight.batch_stats, data.test_images[:16], data.test_labels[:16],
      settings, mesh=make_data_mesh(), batch_size=16, seed=config.seed, progress=False)
      for name, params in (('ema', straight.ema), ('model', straight.params))}
  for key in ('clean_accuracy', 'fgsm_accuracy', 'pgd_accuracy', 'vact', 'vact_pgd'):
    assert results[key] == direct['ema'][key], key
  assert results['vact'] != direct['model']['vact']

  # --mode=eval restores and attacks the EMA params too.
  seen = []
  real = evaluators.evaluate

  def spy(apply_fn, params, *args, **kwargs):
    seen.append(params)
    return real(apply_fn, params, *args, **kwargs)

  monkeypatch.setattr(evaluators, 'evaluate', spy)
  config.eval.checks = config.eval.square_check = False
  report = evaluators.evaluate_run(Run.open(a, config))
  assert report['evaluated_weights'] == 'ema' and report['evaluated_epoch'] == 2
  for x, y in zip(jax.tree.leaves(seen[0]), jax.tree.leaves(straight.ema)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
