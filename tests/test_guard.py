"""The CO signals against NumPy computations of their papers' definitions on a two-layer network
whose input gradient is written out; the guard's detector and adaptive scale against ELLE-A's
rule; the rollback's exactness; the refusals; the guard in the loop."""
import dataclasses
import json
import os
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax import optim

from fat_jax.reports import report

from fat_jax.attacks import init_perturbation
from fat_jax.config import default_config
from fat_jax.losses.elle import adaptive_lambda_update, elle_points, init_adaptive_lambda
from fat_jax.methods import init_train_state, make_train_step, resolve_method
from fat_jax.methods import signals as sg
from fat_jax.run import co_guard, run_log
from fat_jax.methods.guard import (Adaptive, Detector, resolve_guard, scaled_method,
                                   switched_method)
from fat_jax.run.train import train_and_evaluate
from tests.test_seed_methods import method_config, tiny  # noqa: F401  (tiny: a fixture)
from tests.test_train import assert_same_state, data_dir, tiny_config  # noqa: F401

EPS = 0.1
N, D, H, C = 16, 12, 8, 3


# A two-layer network h = relu(x W1 + b1) (node 'A'), logits = h W2 + b2, in JAX and in NumPy.
def apply(params, state, x, train):
  del train
  h = jax.nn.relu(x.reshape(len(x), -1) @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2'], state, {'A': h}


def np_forward(p, x):
  pre = x.reshape(len(x), -1) @ p['w1'] + p['b1']
  h = np.maximum(pre, 0)
  return h @ p['w2'] + p['b2'], h, pre


def np_ce_and_grad(p, x, y):
  """Per-example CE and its gradient w.r.t. each example's input (written out)."""
  logits, _, pre = np_forward(p, x)
  z = logits - logits.max(1, keepdims=True)
  prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  ce = -np.log(prob[np.arange(len(y)), y])
  d_logits = prob - np.eye(C)[y]
  d_x = ((d_logits @ p['w2'].T) * (pre > 0)) @ p['w1'].T
  return ce, d_x.reshape(x.shape)


def np_fgsm(p, x, y):
  """FGSM from zero, α = ε, kept in [0, 1]."""
  _, g = np_ce_and_grad(p, x, y)
  return np.clip(x + EPS * np.sign(g), 0, 1) - x


def correct(p, x, y):
  return np_forward(p, x)[0].argmax(1) == y


@pytest.fixture(scope='module')
def net():
  k = jax.random.split(jax.random.key(3), 5)
  params = {'w1': jax.random.normal(k[0], (D, H)), 'b1': 0.1 * jax.random.normal(k[1], (H,)),
            'w2': jax.random.normal(k[2], (H, C)), 'b2': jnp.zeros((C,))}
  x = jax.random.uniform(k[3], (N, 2, 2, 3))
  y = jax.random.randint(k[4], (N,), 0, C)
  as_np = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)
  return params, x, y, as_np(params), as_np(x), np.asarray(y)


def run(signal, net, key=jax.random.key(7), eps=EPS):
  params, x, y = net[:3]
  return float(jax.jit(lambda p, x, y: signal(apply, p, {}, x, y, key, eps))(params, x, y))


def test_elle_error_is_elles_mean_squared_interpolation_error(net):
  key = jax.random.key(7)
  x_a, x_b, x_c, alpha = (np.asarray(v, np.float64) for v in elle_points(key, net[1], EPS))
  p, _, y = net[3:]
  la, lb, lc = (np_ce_and_grad(p, z, y)[0] for z in (x_a, x_b, x_c))
  expected = np.mean((lc - ((1 - alpha) * la + alpha * lb)) ** 2)
  np.testing.assert_allclose(run(sg.ELLEError(), net, key), expected, rtol=1e-4)


def test_aae_fraction_counts_the_examples_whose_loss_the_step_lowered(net):
  key, eps = jax.random.key(7), 0.5  # a radius with abnormal examples on this network
  eta = np.asarray(init_perturbation(key, net[1], eps, 'uniform', 1.0), np.float64)
  p, x, y = net[3:]
  loss_start, g = np_ce_and_grad(p, x + eta, y)
  delta = np.clip(x + np.clip(eta + 1.25 * eps * np.sign(g), -eps, eps), 0, 1) - x
  expected = np.mean(loss_start > np_ce_and_grad(p, x + delta, y)[0])
  assert 0 < expected < 1  # the case m/n is informative
  assert run(sg.AAEFraction(), net, key, eps) == pytest.approx(expected, abs=1e-7)


def test_vact_is_the_mean_feature_distance_at_the_fgsm_point(net):
  p, x, y = net[3:]
  delta = np_fgsm(p, x, y)
  expected = np.mean(np.linalg.norm(np_forward(p, x)[1] - np_forward(p, x + delta)[1], axis=1))
  np.testing.assert_allclose(run(sg.VAct(node='A'), net), expected, rtol=1e-4)


def test_gradalign_cosine_between_the_gradients_at_x_and_a_random_point(net):
  key = jax.random.key(7)
  eta = np.asarray(jax.random.uniform(key, net[1].shape, jnp.float32, -EPS, EPS), np.float64)
  p, x, y = net[3:]
  g1 = np_ce_and_grad(p, x, y)[1].reshape(N, -1)
  g2 = np_ce_and_grad(p, x + eta, y)[1].reshape(N, -1)
  cos = (g1 * g2).sum(1) / (np.linalg.norm(g1, axis=1) * np.linalg.norm(g2, axis=1))
  np.testing.assert_allclose(run(sg.GradAlignCosine(), net, key), cos.mean(), rtol=1e-4)


def test_fgsm_pgd_gap_is_wongs_check_on_the_batch(net):
  p, x, y = net[3:]
  steps, alpha = 3, 0.25 * EPS
  delta = np.zeros_like(x)
  for _ in range(steps):  # fast_adversarial's attack_pgd: misclassified examples stop moving
    _, g = np_ce_and_grad(p, x + delta, y)
    moved = np.clip(x + np.clip(delta + alpha * np.sign(g), -EPS, EPS), 0, 1) - x
    delta = np.where(correct(p, x + delta, y)[:, None, None, None], moved, delta)
  clean = correct(p, x, y)
  expected = np.mean(clean & correct(p, x + np_fgsm(p, x, y), y)) - np.mean(
      clean & correct(p, x + delta, y))
  signal = sg.FGSMPGDGap(steps=steps, init='zero')
  assert run(signal, net) == pytest.approx(expected, abs=1e-7)


def test_fosc_at_the_fgsm_point(net):
  p, x, y = net[3:]
  delta = np_fgsm(p, x, y)
  _, g = np_ce_and_grad(p, x + delta, y)
  expected = np.mean(EPS * np.abs(g).reshape(N, -1).sum(1) - (delta * g).reshape(N, -1).sum(1))
  np.testing.assert_allclose(run(sg.FOSC(), net), expected, rtol=1e-4)


def test_measure_computes_each_signal_with_its_own_key(net):
  params, x, y = net[:3]
  signals = (sg.ELLEError(), sg.VAct(node='A'))
  out = sg.measure(signals, apply, params, {}, x, y, jax.random.key(7), EPS)
  assert set(out) == {'elle_error', 'vact'}
  for i, s in enumerate(signals):
    assert float(out[s.name]) == pytest.approx(run(s, net, jax.random.fold_in(
        jax.random.key(7), i)), rel=1e-6)


def test_detector_and_adaptive_scale_follow_elle_a():
  errors = [1.0, 1.1, 0.9, 1.0, 3.0, 1.2, 1.0, 0.5, 5.0, 1.0]
  detector, policy = Detector(sensitivity=2.0), Adaptive(decay=0.9)
  s, carry, history = 0.0, init_adaptive_lambda(), []
  for e in errors:
    trigger = detector.triggered(history, e, 1)
    history.append(e)
    s = policy.next_scale(s, trigger, 1)
    carry = adaptive_lambda_update(carry, e, lam_max=4000.0, decay=0.9, sensitivity=2.0)
    assert 4000.0 * s == pytest.approx(float(carry.lam), rel=1e-5)
  assert s < 1  # a spike happened, then decayed
  # Direction −1 (the GradAlign cosine falls at CO) and a window.
  assert Detector(2.0).triggered([0.9, 0.91, 0.89], 0.5, -1)
  assert not Detector(2.0).triggered([0.9, 0.91, 0.89], 1.5, -1)
  assert Detector(2.0, window=3).triggered([100.0, 1.0, 1.1, 0.9], 2.0, 1)
  assert not Detector(2.0).triggered([100.0, 1.0, 1.1, 0.9], 2.0, 1)


def guard_config(**fields):
  c = default_config().guard
  c.every = 2
  for k, v in fields.items():
    c[k] = v
  return c


@pytest.mark.parametrize('method, fields, match', [
    (dict(name='fgsm'), dict(policy='adaptive'), "'adaptive' scales a weighted term.*'fgsm'"),
    (dict(name='elle_a'), dict(policy='adaptive'), "'adaptive' and ELLE-A"),
    (dict(name='pgd_at'), dict(policy='rollback'), "'n_fgsm'.*'pgd_at' trains with PGDAttack"),
    (dict(name='n_fgsm'), dict(policy='rollback'), "changes nothing in method 'n_fgsm'"),
    (dict(name='fgsm'), dict(policy='rollback', rollback_checks=3, snapshots=2),
     'rollback_checks=3.*snapshots=2'),
    (dict(name='fgsm'), dict(signals=('elle', 'fosc')), 'guard.signals must name'),
    (dict(name='fgsm'), dict(act_on=('vact',), signals=('fosc',)), 'guard.act_on'),
    (dict(name='fgsm'), dict(every=0, policy='rollback'), 'guard.every = 0'),
    (dict(name='fgsm'), dict(policy='restart'), 'Unknown guard.policy'),
])
def test_impossible_guards_are_refused_naming_both_parts(method, fields, match):
  m = resolve_method(method_config(**method), 8 / 255)
  with pytest.raises(ValueError, match=match):
    resolve_guard(guard_config(**fields), m)


def test_guard_values_scale_and_switch_the_method():
  assert resolve_guard(default_config().guard, resolve_method(method_config('fgsm'), 0.1)) is None
  m = resolve_method(method_config('n_fgsm', lap=dict(beta=0.01),
                                   aaer=dict(lambda1=1.0, lambda2=1.5, lambda3=0.15),
                                   gradalign=dict(lam=0.2)), 0.1)
  half = scaled_method(m, 0.5)
  assert (half.lap.beta, half.aaer.lambda1, half.gradalign.lam) == (0.005, 0.5, 0.1)
  assert half.aaer.lambda2 == 1.5 and half.attack == m.attack
  fgsm = resolve_method(method_config('fgsm'), 0.1)
  n = switched_method(fgsm, 'n_fgsm').attack
  assert (n.init, n.init_scale, n.alpha, n.project) == ('uniform', 2.0, pytest.approx(0.1), False)
  assert switched_method(fgsm, 'none') is fgsm


def tiny_run(tiny, method, steps):
  model, ts, images, labels, indices = tiny
  schedule = optim.Schedule('cyclic', lr_max=0.2, total_steps=40, steps_per_epoch=10)
  build = lambda m: make_train_step(model, m, schedule, augment_mode='none',
                                    key=jax.random.key(2), weight_decay=5e-4)
  batches = [(jnp.roll(images, i, axis=0), jnp.roll(labels, i), indices) for i in range(steps)]
  return model, ts, build, batches


def fresh(ts):
  return co_guard.snapshot(ts)


def test_a_restored_snapshot_reruns_the_unguarded_steps_bit_for_bit(tiny):
  method = resolve_method(method_config('fgsm'), EPS)
  _, ts0, build, batches = tiny_run(tiny, method, 6)
  step = jax.jit(build(method), donate_argnums=0)
  ts, reference = fresh(ts0), []
  for b in batches:
    ts, _ = step(ts, *b)
    reference.append(co_guard.snapshot(ts))
  ts = fresh(ts0)
  for b in batches[:2]:
    ts, _ = step(ts, *b)
  kept = co_guard.snapshot(ts)
  for b in batches[2:]:  # the steps a trigger would undo (their inputs donated)
    ts, _ = step(ts, *b)
  ts = kept
  for b in batches[2:]:
    ts, _ = step(ts, *b)
  assert_same_state(reference[-1], ts)


def guarded(tiny, method, steps, tmp_path, records=(), **fields):
  model, ts0, build, batches = tiny_run(tiny, method, steps)
  guard = resolve_guard(guard_config(**fields), method)
  images, labels = tiny[2], tiny[3]
  gs = co_guard.GuardedStep(guard, method, build, model,
                            (np.asarray(images, np.float32) / 255, np.asarray(labels)), eps=EPS,
                            key=jax.random.key(5), workdir=str(tmp_path), steps_per_epoch=4,
                            records=records)
  return gs, fresh(ts0), build, batches


def test_guard_off_leaves_training_unchanged_and_logs_its_signals(tiny, tmp_path):
  method = resolve_method(method_config('fgsm'), EPS)
  gs, ts, build, batches = guarded(tiny, method, 4, tmp_path, node='A',
                                   signals=('gradalign_cos', 'vact'), act_on=('vact',))
  step = jax.jit(build(method), donate_argnums=0)
  plain = fresh(ts)
  for b in batches:
    ts, _ = gs(ts, *b)
    plain, _ = step(plain, *b)
  assert_same_state(plain, ts)
  records = run_log.read_records(str(tmp_path), name=run_log.SIGNALS)
  assert [r['step'] for r in records] == [8, 10]  # tiny's state is at step 7; every 2 steps
  assert {'gradalign_cos', 'vact', 'triggered'} <= set(records[0])
  assert gs.epoch_summary()['guard_rollbacks'] == []


def test_rollback_restores_the_state_of_the_check_before_the_trigger(tiny, tmp_path):
  method = resolve_method(method_config('fgsm'), EPS)
  # sensitivity 0: the first value above the mean of the earlier ones triggers.
  gs, ts, build, batches = guarded(tiny, method, 16, tmp_path, node='A', policy='rollback',
                                   sensitivity=0.0, act_on=('vact',), switch='none', every=1)
  step = jax.jit(build(method), donate_argnums=0)
  plain, reference = fresh(ts), {}
  for b in batches:
    ts, _ = gs(ts, *b)
    plain, _ = step(plain, *b)
    reference[int(plain.step)] = co_guard.snapshot(plain)
    if gs.switched:
      break
  assert gs.switched, 'no trigger in 16 checks'
  event = gs.epoch_summary()['guard_rollbacks'][0]
  assert event['to_step'] == event['at_step'] - 1 and event['switch'] == 'none'
  assert int(ts.step) == event['at_step']  # the clock goes on
  assert_same_state(reference[event['to_step']]._replace(step=ts.step), ts)
  assert run_log.read_records(str(tmp_path), name=run_log.SIGNALS)[-1]['rollback'] == {
      'to_step': event['to_step'], 'switch': 'none'}


def test_resuming_replays_the_detectors_values_the_scale_and_the_switch(tiny, tmp_path):
  method = resolve_method(method_config('fgsm', gradalign=dict(lam=0.2)), EPS)
  model, _, build, _ = tiny_run(tiny, method, 0)
  batch = (np.zeros((4, 28, 28, 1), np.float32), np.zeros((4,), np.int32))
  make = lambda records, **fields: co_guard.GuardedStep(
      resolve_guard(guard_config(node='A', signals=('vact',), act_on=('vact',), **fields),
                    method), method, build, model, batch, eps=EPS, key=jax.random.key(0),
      workdir=str(tmp_path), steps_per_epoch=4, records=records)
  records = [{'epoch': 0.5, 'step': 2, 'vact': 1.0, 'triggered': [], 'scale': 0.0},
             {'epoch': 1.0, 'step': 4, 'vact': 9.0, 'triggered': ['vact'], 'scale': 1.0}]
  gs = make(records, policy='adaptive')
  assert gs.history == {'vact': [1.0, 9.0]} and gs.scale == 1.0 and not gs.switched
  records[1] = {**records[1], 'rollback': {'to_step': 2, 'switch': 'n_fgsm'}}
  gs = make(records, policy='rollback')
  assert gs.switched and gs.history == {'vact': []} and gs.method.attack.init == 'uniform'
  assert gs.epoch_summary() == {'guard_triggers': {}, 'guard_rollbacks': []}


def test_adaptive_scale_is_a_traced_weight_of_the_same_step(tiny, tmp_path):
  method = resolve_method(method_config('fgsm', gradalign=dict(lam=0.2)), EPS)
  gs, ts, build, batches = guarded(tiny, method, 1, tmp_path, node='A', policy='adaptive')
  gs.scale = 0.5
  ts_guarded, metrics = gs(fresh(ts), *batches[0])
  ts_static, _ = jax.jit(build(scaled_method(method, 0.5)))(fresh(ts), *batches[0])
  assert float(metrics['guard_scale']) == 0.5
  for a, b in zip(jax.tree.leaves(ts_static), jax.tree.leaves(ts_guarded)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


LOOP = {'guard.every': 2, 'guard.batch_size': 16, 'guard.hold_out': False,
        'guard.signals': ('elle_error', 'vact'), 'guard.act_on': ('elle_error',), 'num_epochs': 1}


def test_a_v_act_node_the_model_lacks_is_refused(data_dir, tmp_path):
  with pytest.raises(ValueError, match="guard.node 'E'.*has \\['A', 'B'\\]"):
    train_and_evaluate(tiny_config(data_dir, **LOOP, **{'guard.node': 'E'}), str(tmp_path))


@pytest.mark.slow
def test_guard_in_the_loop_logs_signals_and_resumes(data_dir, tmp_path):
  a = str(tmp_path / 'a')
  train_and_evaluate(tiny_config(data_dir, **LOOP), a)
  records = run_log.read_records(a, name=run_log.SIGNALS)
  assert [r['step'] for r in records] == [2, 4] and records[0]['vact'] > 0
  assert run_log.read_records(a)[0]['guard_triggers'] == {}
  md = open(report.write_report([a], str(tmp_path / 'report'), examples=False)).read()
  assert '## CO signals' in md and os.path.exists(tmp_path / 'report' / 'signals.png')
  stored = run_log.read_json(a, run_log.CONFIG)
  del stored['guard']  # a run written before the guard existed resumes
  run_log.write_json(a, run_log.CONFIG, stored)
  train_and_evaluate(tiny_config(data_dir, num_epochs=1), a)


@pytest.mark.slow
def test_logging_the_signals_in_the_loop_changes_no_number(data_dir, tmp_path):
  runs = {name: str(tmp_path / name) for name in ('plain', 'guarded')}
  train_and_evaluate(tiny_config(data_dir, num_epochs=1), runs['plain'])
  train_and_evaluate(tiny_config(data_dir, **LOOP), runs['guarded'])
  keep = lambda r: {k: v for k, v in r.items() if 'time' not in k and 'guard' not in k}
  for name, run_dir in runs.items():
    runs[name] = ([keep(r) for r in run_log.read_records(run_dir)],
                  keep(run_log.read_json(run_dir, run_log.RESULTS)))
  assert runs['plain'] == runs['guarded']


def test_held_out_batch_leaves_training(data_dir):
  from fat_jax.data import load_dataset
  data = load_dataset(tiny_config(data_dir).data)
  guard = resolve_guard(guard_config(batch_size=16), resolve_method(method_config('fgsm'), EPS))
  held, (x, y) = co_guard.guard_batch(data, guard)
  assert len(held.train_images) == len(data.train_images) - 16 and x.shape[0] == 16
  np.testing.assert_array_equal(x * 255, data.train_images[-16:])
  kept, _ = co_guard.guard_batch(data, dataclasses.replace(guard, hold_out=False))
  assert kept is data


def test_checkpoint_holds_the_rollback_snapshots(tiny, tmp_path):
  from fat_jax.run.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  method = resolve_method(method_config('fgsm'), EPS)
  gs, ts, _, batches = guarded(tiny, method, 4, tmp_path, node='A', policy='rollback',
                               signals=('vact',), act_on=('vact',), sensitivity=1e9)
  for b in batches:  # checks at steps 8 and 10 keep their states
    ts, _ = gs(ts, *b)
  assert [int(s.step) for s in gs.snapshots] == [8, 10]
  with Checkpointer(str(tmp_path / 'run')) as checkpointer:
    checkpointer.save(1, ts, None, gs.snapshots)
    checkpointer.save(2, ts)
    kept = checkpointer.snapshots(1, ts, 2)
    assert checkpointer.snapshots(2, ts, 2) is None  # nothing saved with it
    assert_same_state(checkpointer.restore(1, ts), ts)
  for a, b in zip(gs.snapshots, kept):
    assert_same_state(a, b)
  records = run_log.read_records(str(tmp_path), name=run_log.SIGNALS)
  resumed, *_ = guarded(tiny, method, 0, tmp_path, node='A', policy='rollback',
                        signals=('vact',), act_on=('vact',), records=records)
  assert resumed.snapshot_steps == [8, 10]
  with pytest.raises(ValueError, match=r'snapshots of steps \[10\]; signals.jsonl says'):
    resumed.restore_snapshots(kept[1:])
  resumed.restore_snapshots(kept)
  assert len(resumed.snapshots) == 2 and all(a is b for a, b in zip(resumed.snapshots, kept))


def trigger_at(monkeypatch, counts):
  """The detector triggers (every signal) when it knows exactly `counts` earlier values."""
  monkeypatch.setattr(Detector, 'triggered',
                      lambda self, history, value, direction: len(history) in counts)


def cut(whole: str, workdir: str, epoch: int) -> None:
  """`workdir`: run `whole` as a kill during epoch `epoch` + 1 leaves it (its later checkpoints,
  metrics records and results never written; its later signals records kept)."""
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copytree(whole, workdir)
  for name in os.listdir(os.path.join(workdir, 'checkpoints')):
    if name.isdigit() and int(name) > epoch:
      shutil.rmtree(os.path.join(workdir, 'checkpoints', name))
  records = run_log.read_records(workdir)
  with open(os.path.join(workdir, run_log.METRICS), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records[:epoch])
  os.remove(os.path.join(workdir, run_log.RESULTS))


def last_state(config, workdir: str):
  """The state of the last checkpoint in `workdir` (either input path)."""
  from fat_jax.data import load_data  # pylint: disable=import-outside-toplevel
  from fat_jax.models import build_model  # pylint: disable=import-outside-toplevel
  from fat_jax.run.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  like = init_train_state(build_model(config.model, load_data(config.data).info),
                          jax.random.key(0))
  with Checkpointer(workdir) as checkpointer:
    return checkpointer.restore(checkpointer.latest_epoch(), like)


def assert_same_run(a: str, b: str, config) -> None:
  assert_same_state(last_state(config, a), last_state(config, b))
  untimed = lambda r: {k: v for k, v in r.items() if 'time' not in k}
  assert [untimed(r) for r in run_log.read_records(a)] == [
      untimed(r) for r in run_log.read_records(b)]
  assert (run_log.read_records(a, name=run_log.SIGNALS)
          == run_log.read_records(b, name=run_log.SIGNALS))
  assert untimed(run_log.read_json(a, run_log.RESULTS)) == untimed(
      run_log.read_json(b, run_log.RESULTS))


RESUME = {'num_epochs': 3, 'checkpoint_keep': 3, 'guard.every': 1, 'guard.batch_size': 16,
          'guard.hold_out': False, 'guard.signals': ('elle_error',),
          'guard.act_on': ('elle_error',)}


@pytest.mark.slow  # ~ 2 min: five short runs
def test_guarded_runs_resume_bit_exactly(data_dir, tmp_path, monkeypatch):
  """4 steps per epoch, a check after each. Rollback: the trigger at step 5 restores step 3;
  a run cut after epoch 2 resumes after the rollback, one cut after epoch 1 before it, with
  the snapshots of steps 3 and 4 from the checkpoint. Adaptive: triggers at steps 3 and 6,
  the scale decaying across the cut after epoch 1."""
  rollback = tiny_config(data_dir, 'fgsm', **RESUME, **{
      'guard.policy': 'rollback', 'guard.rollback_checks': 2, 'guard.snapshots': 2})
  adaptive = tiny_config(data_dir, 'fgsm', **RESUME, **{
      'guard.policy': 'adaptive', 'guard.decay': 0.5, 'method.gradalign.lam': 0.2})
  for name, config, counts, cuts in (('rollback', rollback, {4}, (1, 2)),
                                     ('adaptive', adaptive, {2, 5}, (1,))):
    trigger_at(monkeypatch, counts)
    whole = str(tmp_path / name)
    train_and_evaluate(config, whole)
    signals = run_log.read_records(whole, name=run_log.SIGNALS)
    assert [r['step'] for r in signals] == list(range(1, 13))
    if name == 'rollback':
      assert signals[4]['rollback'] == {'to_step': 3, 'switch': 'n_fgsm'}
    else:
      assert [r['scale'] for r in signals[:6]] == [0, 0, 1, 0.5, 0.25, 1]
    for epoch in cuts:
      resumed = str(tmp_path / f'{name}_cut{epoch}')
      cut(whole, resumed, epoch)
      train_and_evaluate(config, resumed)
      assert_same_run(whole, resumed, config)


def test_streamed_guard_batch_spans_the_source_and_leaves_training(tmp_path):
  pytest.importorskip('grain')
  # pylint: disable=import-outside-toplevel
  from fat_jax.data import load_data, stream
  from tests.test_streaming import _config, make_image_folder
  make_image_folder(tmp_path, classes=('a', 'b', 'c'), per_class=4, size=48)
  data = load_data(_config(name='image_folder', dir=str(tmp_path), pipeline='stream',
                           image_size=32))
  guard = resolve_guard(guard_config(batch_size=4), resolve_method(method_config('fgsm'), EPS))
  held, (x, y) = co_guard.guard_batch(data, guard)
  rows = [0, 3, 6, 9]  # ⌊i·12/4⌋ of the 12 files, sorted by class
  assert y.tolist() == [data.train[i][1] for i in rows] == [0, 0, 1, 2]
  expected = [data.transform(data.train[i][0], train=False, rng=None) for i in rows]
  np.testing.assert_array_equal(x * 255, np.stack(expected))
  assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
  assert held.num_train == 8 and {held.train[i][0] for i in range(8)}.isdisjoint(
      data.train[i][0] for i in rows)
  stream.train_dataset(held.train, held.transform, stream.Layout(8, 4), 0, 1)[1]  # it streams
  kept, _ = co_guard.guard_batch(data, dataclasses.replace(guard, hold_out=False))
  assert kept is data
  with pytest.raises(ValueError, match='guard.batch_size=12 leaves no training examples'):
    co_guard.guard_batch(data, dataclasses.replace(guard, batch_size=12))


@pytest.mark.slow  # ~ 50 s: two short runs on a streamed folder
def test_guarded_run_on_a_streamed_folder_resumes_bit_exactly(tmp_path):
  pytest.importorskip('grain')
  from tests.test_streaming import make_image_folder  # pylint: disable=import-outside-toplevel
  make_image_folder(tmp_path / 'data', classes=('a', 'b'), per_class=10, size=32)
  c = tiny_config('', 'fgsm', **{
      **RESUME, 'num_epochs': 2, 'guard.batch_size': 4, 'guard.hold_out': True,
      'guard.policy': 'rollback', 'guard.rollback_checks': 2, 'guard.snapshots': 2,
      'guard.sensitivity': 1e9})
  c.data.name, c.data.dir, c.data.image_size = 'image_folder', str(tmp_path / 'data'), 32
  c.batch_size = c.eval.n = c.eval.monitor_n = c.eval.batch_size = 4
  whole = str(tmp_path / 'whole')
  train_and_evaluate(c, whole)
  signals = run_log.read_records(whole, name=run_log.SIGNALS)
  assert [r['step'] for r in signals] == list(range(1, 9))  # 16 of 20 files train: 4 steps
  resumed = str(tmp_path / 'cut')
  cut(whole, resumed, 1)
  train_and_evaluate(c, resumed)
  assert_same_run(whole, resumed, c)
