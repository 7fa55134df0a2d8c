"""`train_and_evaluate(config, workdir)`: the training loop.

Per epoch: train, evaluate clean / FGSM / PGD on a fixed test subset (with the
feature-activation differences V_act per node at the FGSM and PGD points), check
for catastrophic overfitting, append a record to ``metrics.jsonl``, checkpoint. A
rerun with the same workdir resumes from the last checkpoint; the data order
(seed, epoch) and the step keys (seed, step) make the resumed run identical to
an uninterrupted one. At the end the last good state is evaluated with PGD-k-r
into ``results.json``. With ``config.ema_decay`` > 0 the state keeps a weight average
(`optim.WeightAverage`), and the monitor and the final evaluation use it
(``evaluated_weights``: 'ema', else 'model'). The report (`fat_jax.reports.report`) is the
launcher's job, not the loop's.
"""
from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from fat_jax import optim, validation

from fat_jax.analysis.diagnostics import co_onset
from fat_jax.config import default_config
from fat_jax.data import load_data, steps_per_epoch, stored_frame_shape, train_batches
from fat_jax.analysis.robustness import robustness
from fat_jax.evaluate import SUITES, PGDSettings
from fat_jax.run import run_config, run_log, tensorboard_log, workdir_lock
from fat_jax.run.checkpoint import Checkpointer, CheckpointError
from fat_jax.run.co_guard import GuardedStep, guard_batch
from fat_jax.run.divergence import DivergenceError, check_finite, check_loss, check_monitor
from fat_jax.run.runs import Run, State
from fat_jax.methods import (evaluated_weights, init_examples, init_regularizer_state,
                             init_train_state, make_train_step, resolve_method,
                             unread_fields)
from fat_jax.methods.guard import resolve_guard
from fat_jax.models import build_model
from fat_jax.parallel import make_data_mesh, replicate

log = logging.getLogger('fat_jax')

# Config sections that may change between a run and its resumption.
RESUMABLE_CHANGES = ('eval', 'co_monitor', 'progress', 'checkpoint_keep', 'distributed',
                     'analysis', 'report', 'compilation_cache', 'tensorboard')
NAN_CHECK_EVERY = 20
# Component statistics shown in the epoch line (all are in metrics.jsonl).
EXTRA_LOG = {'train_aaer_aae_fraction': 'AAE fraction', 'train_gradalign_cos': 'grad cos',
             'train_atas_step': 'ATAS step/ε', 'train_stable_loss': 'L_stable',
             'train_co_difference': 'L_stable(C_p)', 'fosc_fgsm': 'FOSC fgsm',
             'fosc_pgd': 'FOSC pgd'}


def make_schedule(config, steps: int) -> optim.Schedule:
  o = config.optim
  return optim.Schedule(kind=o.schedule, lr_max=o.lr_max, total_steps=config.num_epochs * steps,
                        steps_per_epoch=steps, momentum=o.momentum,
                        base_momentum=o.base_momentum, milestones=tuple(o.milestones),
                        gamma=o.gamma, cycle_up=o.cycle_up)


def make_weight_average(config, schedule: optim.Schedule) -> optim.WeightAverage | None:
  """The weight average of `config` (None when ``ema_decay`` = 0): τ = ``ema_decay``, warm-up
  W = ``ema_warmup`` × the total number of steps (the official 0.025 × epochs × steps per
  epoch, ``gowal21uncovering/utils/watrain.py``)."""
  if not config.ema_decay:
    return None
  return optim.WeightAverage(config.ema_decay, config.ema_warmup * schedule.total_steps)


def _same_run(stored, current, default) -> bool:
  """Whether a stored config (section) trains the same run as the current one. A field the
  stored one lacks (added to fat_jax after the run started) counts as unchanged while it holds
  its default value."""
  if not (isinstance(stored, dict) and isinstance(current, dict)):
    return stored == current
  default = default if isinstance(default, dict) else {}
  return set(stored) <= set(current) and all(
      _same_run(stored[k], v, default.get(k)) if k in stored else v == default.get(k)
      for k, v in current.items())


def _check_resumable(workdir: str, config, checkpointer) -> None:
  """Check that the config.json in `workdir`, if any, trains the same run. One of a run that
  never trained (no checkpoint, no metrics record: its start failed) is replaced."""
  stored = run_config.read_stored(workdir)
  if stored is None:
    return
  current = json.loads(config.to_json_best_effort())
  default = json.loads(default_config().to_json_best_effort())
  differ = sorted(k for k in set(stored) | set(current) if k not in RESUMABLE_CHANGES and not (
      _same_run(stored[k], current.get(k), default.get(k)) if k in stored  # a newer section:
      else current.get(k) == default.get(k)))                              # same while default
  if not differ:
    return
  if checkpointer.epochs() or run_log.has_records(workdir):
    raise ValueError(f'{workdir} holds a run with a different config (sections {differ}); '
                     'use a new --workdir or the original config.')
  log.info('%s holds the %s of a run that never trained (sections %s differ): this config '
           'replaces it.', workdir, run_log.CONFIG, differ)


def _resume(checkpointer, workdir: str) -> tuple[int, list[dict]]:
  """The epoch to resume from and the metrics records up to it: the newest checkpoint that
  verifies and whose epoch has its record. A record lost with a torn last line is trained
  again (deterministically): the checkpoints after the last record are deleted first."""
  start = checkpointer.latest_verified_epoch(set_aside=True) or 0
  history = run_log.read_records(workdir, up_to_epoch=start)
  logged = history[-1]['epoch'] if history else 0
  if logged < start:
    log.warning('%s ends at epoch %d but the checkpoint of epoch %d exists: training the epochs '
                'after %d again.', run_log.METRICS, logged, start, logged)
    checkpointer.delete_after(logged)
    start = checkpointer.latest_verified_epoch(set_aside=True) or 0
    history = run_log.read_records(workdir, up_to_epoch=start)
  run_log.read_records(workdir, up_to_epoch=start, name=run_log.MONITOR)
  return start, history


def _last_good(checkpointer) -> str:
  """Where a diverged run can go back to: the newest checkpoint that verifies (or has no
  checksum, said so)."""
  try:
    epoch = checkpointer.latest_verified_epoch()
  except CheckpointError as e:
    return f'No checkpoint verifies ({e}).'
  if epoch is None:
    return 'No checkpoint was saved; lower optim.lr_max or eps and rerun in a new --workdir.'
  checked = 'verified' if checkpointer.verify(epoch) else 'unverified: it has no checksum'
  return (f'The last good state is the checkpoint of epoch {epoch} ({checkpointer.path(epoch)}, '
          f'{checked}); lower optim.lr_max or eps and rerun in a new --workdir.')


def _train_epoch(train_step, ts, batches, config, epoch: int, steps: int, checkpointer,
                 after_step=None):
  """One epoch of training on `batches` (`fat_jax.data.train_batches`); returns the state and
  the epoch-mean metrics.

  `after_step(ts, i)` (optional) runs after the epoch's step i (0-based).
  """
  bar = tqdm(batches.epoch(epoch), total=steps, desc=f'epoch {epoch}/{config.num_epochs}',
             leave=False, disable=not config.progress, unit='step')
  sums = None
  for i, batch in enumerate(bar):  # (images, labels, indices) on the mesh
    ts, metrics = train_step(ts, *batch)
    if after_step is not None:
      after_step(ts, i)
    sums = metrics if sums is None else jax.tree.map(lambda a, b: a + b, sums, metrics)
    if (i + 1) % NAN_CHECK_EVERY == 0 or i + 1 == steps:
      loss = float(sums['loss']) / (i + 1)
      if not np.isfinite(loss):
        raise DivergenceError(f'Training diverged: non-finite loss in epoch {epoch} by step '
                              f'{i + 1}. {_last_good(checkpointer)}')
      bar.set_postfix(loss=f'{loss:.3f}', acc=f"{float(sums['accuracy']) / (i + 1):.3f}")
  means = {f'train_{k}': (np.asarray(v) / steps).tolist() for k, v in sums.items()
           if k not in ('lr', 'momentum')}
  means.update({k: float(metrics[k]) for k in ('lr', 'momentum') if k in metrics})
  return ts, means


def _monitor_protocol(settings: PGDSettings, n: int, config) -> dict:
  """The settings the per-epoch monitor ran with, recorded with each of its numbers."""
  return {'n': n, 'eps': settings.eps, 'pgd_steps': settings.steps,
          'pgd_restarts': settings.restarts, 'pgd_step_size': settings.alpha,
          'batch_size': config.eval.batch_size, 'seed': config.seed}


def train_and_evaluate(config, workdir: str) -> dict:
  """Train `config.method` and evaluate it; returns the content of results.json.

  The config is checked first (`fat_jax.validation`), then the workdir is locked against a
  second writer (`fat_jax.run.workdir_lock`) for the whole run.
  """
  validation.validate_config(config, training=True, suites=SUITES)
  workdir = os.path.abspath(workdir)
  with workdir_lock.locked(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict:
  method = resolve_method(config.method, config.eps)  # fail on a bad method before loading data
  unread = unread_fields(config.method, method, default_config().method)
  if unread:
    raise validation.ConfigError('\n'.join(unread))
  guard = resolve_guard(config.guard, method)  # None: no guard
  mesh = make_data_mesh()
  for field, size in (('batch_size', config.batch_size),
                      ('eval.batch_size', config.eval.batch_size)):
    if size % mesh.size:
      raise ValueError(f'{field}={size} is not divisible by the {mesh.size} devices; choose a '
                       'multiple of the device count.')
  data = load_data(config.data)
  if guard is not None:  # its fixed batch, held out of training when guard.hold_out
    data, guard_xy = guard_batch(data, guard)
  model = build_model(config.model, data.info)
  steps = steps_per_epoch(data.num_train, config.batch_size)
  if steps == 0:
    raise ValueError(f'batch_size={config.batch_size} exceeds the {data.num_train} '
                     'training examples.')
  if data.num_train % config.batch_size:
    log.info('batch_size=%d does not divide the %d training examples: each epoch leaves out '
             '%d (the last of its shuffled order).', config.batch_size, data.num_train,
             data.num_train % config.batch_size)
  schedule = make_schedule(config, steps)
  batches = train_batches(data, batch_size=config.batch_size, seed=config.seed,
                          num_epochs=config.num_epochs, mesh=mesh)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))

  os.makedirs(workdir, exist_ok=True)
  with Checkpointer(workdir, keep=config.checkpoint_keep) as checkpointer:
    _check_resumable(workdir, config, checkpointer)
    examples = init_examples(method, data.num_train,
                             stored_frame_shape(data.info.image_shape, data.info.augment))
    ema = make_weight_average(config, schedule)
    ts = replicate(init_train_state(model, init_key, examples, ema=ema,
                                    regularizer_state=init_regularizer_state(method)), mesh)
    start, history = _resume(checkpointer, workdir)
    if start:
      ts = checkpointer.restore(start, ts)
      batches.restore(checkpointer.data_state(start))
      log.info('Resuming from the checkpoint of epoch %d in %s.', start, workdir)
    run_log.write_json(workdir, run_log.CONFIG, json.loads(config.to_json_best_effort()))
    events = tensorboard_log.EventLog(workdir, start * steps + 1, enabled=config.tensorboard)

    build_step = lambda m: make_train_step(model, m, schedule,
                                           weight_decay=config.optim.weight_decay,
                                           augment_mode=data.info.augment, key=step_key, ema=ema)
    train_step = jax.jit(build_step(method), donate_argnums=0)
    if guard is not None:  # the CO guard every guard.every steps (fat_jax.run.co_guard)
      train_step = GuardedStep(
          guard, method, build_step, model, guard_xy, eps=config.eps,
          key=jax.random.fold_in(init_key, 1), workdir=workdir, steps_per_epoch=steps,
          records=run_log.read_records(workdir, up_to_epoch=start, name=run_log.SIGNALS))
      if start and train_step.snapshot_steps:  # the rollback's snapshots at the checkpoint
        kept = checkpointer.snapshots(start, ts, len(train_step.snapshot_steps))
        if kept is None:
          log.warning('The checkpoint of epoch %d holds no CO guard snapshots (an older '
                      'fat_jax): a rollback can only go back to checks after it.', start)
        else:
          train_step.restore_snapshots(kept)
    # The run's settings and test points (`fat_jax.run.runs`), evaluated by
    # `fat_jax.analysis.robustness` as the monitor and the final evaluation.
    run = Run.open(workdir, config, data=data)
    monitor = run.monitor_pgd
    protocol = _monitor_protocol(monitor, len(run.test_batches(config.eval.monitor_n)[0]), config)
    if history and history[-1].get('monitor', protocol) != protocol:
      log.warning('The monitor settings changed on resuming: epochs ≤ %d were measured with %s, '
                  'later ones with %s (each record of %s holds its own).', start,
                  history[-1]['monitor'], protocol, run_log.METRICS)
    cm = config.co_monitor
    onset = co_onset(history, drop=cm.drop, gap=cm.gap)
    ts_epoch = start
    every = config.eval.monitor_every_steps
    weights = evaluated_weights(ts)[0]  # 'ema' or 'model', recorded with every evaluation
    monitor_time = [0.0]  # time of the within-epoch monitor, not counted as training time

    def monitor_within_epoch(epoch):
      """Every `every` steps inside an epoch: the monitor into monitor.jsonl
      (docs/protocol.md §3)."""
      def after_step(ts, i):
        if not every or ((epoch - 1) * steps + i + 1) % every or i + 1 == steps:
          return
        r = robustness(run, State(model, ts, epoch), monitor=True)
        check_monitor(r, f'at step {(epoch - 1) * steps + i + 1} (epoch {epoch})',
                      lambda: _last_good(checkpointer))
        monitor_time[0] += r['wall_time_s']
        record = {
            'epoch': epoch - 1 + (i + 1) / steps, 'step': (epoch - 1) * steps + i + 1,
            **{f'{k}_accuracy': r[f'{k}_accuracy'] for k in ('clean', 'fgsm', 'pgd')},
            'vact': r['vact'], 'vact_pgd': r['vact_pgd'], 'fosc_fgsm': r['fosc_fgsm'],
            'fosc_pgd': r['fosc_pgd'], 'monitor': protocol, 'evaluated_weights': weights}
        run_log.append_record(workdir, record, name=run_log.MONITOR)
        events.write(record, record['step'])
      return after_step

    for epoch in range(start + 1, config.num_epochs + 1):
      if onset is not None and cm.early_stop:
        break
      t0, monitor_time[0] = time.time(), 0.0
      ts, record = _train_epoch(train_step, ts, batches, config, epoch, steps, checkpointer,
                                monitor_within_epoch(epoch))
      # The loss precedes each update: the state after the epoch's last step is checked here,
      # before it is evaluated, logged or saved, and so are the loss and the monitor's values
      # (finite weights can still be too large for finite forwards).
      last_good = lambda: _last_good(checkpointer)
      check_finite(ts, f'after epoch {epoch}', last_good)
      check_loss(record['train_ce'], data.info.num_classes, f'of epoch {epoch}', last_good)
      train_time = time.time() - t0 - monitor_time[0]
      result = robustness(run, State(model, ts, epoch), monitor=True)
      check_monitor(result, f'after epoch {epoch}', last_good)
      record = {'epoch': epoch, **record,
                **{f'{k}_accuracy': result[f'{k}_accuracy'] for k in ('clean', 'fgsm', 'pgd')},
                'vact': result['vact'], 'vact_pgd': result['vact_pgd'],
                'fosc_fgsm': result['fosc_fgsm'], 'fosc_pgd': result['fosc_pgd'],
                'train_time_s': train_time, 'eval_time_s': result['wall_time_s'],
                'monitor': protocol, 'evaluated_weights': weights}
      if guard is not None:
        record.update(train_step.epoch_summary())
      history.append(record)
      onset = co_onset(history, drop=cm.drop, gap=cm.gap)
      record['co_detected'] = onset is not None
      run_log.append_record(workdir, record)
      events.write(record, epoch * steps)
      extras = ''.join(f'  {label} {record[key]:.3f}' for key, label in EXTRA_LOG.items()
                       if key in record)
      if record['vact']:
        extras += '  V_act ' + ' '.join(f'{node} {v:.3g}' for node, v in record['vact'].items())
      log.info('epoch %d  loss %.4f  adv train acc %.3f  test clean %.3f  fgsm %.3f  pgd-%d %.3f'
               '%s  (%.0f s)%s', epoch, record['train_loss'], record['train_accuracy'],
               record['clean_accuracy'], record['fgsm_accuracy'], monitor.steps,
               record['pgd_accuracy'], extras, train_time,
               f'  CO detected at epoch {onset}' if onset == epoch else '')
      if onset is not None and cm.early_stop:
        log.info('Early stop: catastrophic overfitting at epoch %d; evaluating epoch %d.',
                 onset, epoch - 1)
        ts, ts_epoch = checkpointer.restore(epoch - 1, ts), epoch - 1
        break
      checkpointer.save(epoch, ts, batches.state(),
                        train_step.snapshots if guard is not None else ())
      ts_epoch = epoch
    events.close()

    check_finite(ts, 'before the final evaluation', lambda: _last_good(checkpointer))
    settings = run.final_pgd
    final = robustness(run, State(model, ts, ts_epoch))
    check_monitor(final, f'in the final evaluation (epoch {ts_epoch})',
                  lambda: _last_good(checkpointer))
  run_log.write_arrays(workdir, run_log.RESULT_FLAGS, final.pop('flags'))
  results = {'method': config.method.name, 'dataset': config.data.name,
             'model': config.model.name, 'train_eps': config.eps, 'seed': config.seed,
             'evaluated_epoch': ts_epoch, 'evaluated_step': ts_epoch * steps,
             'evaluated_weights': weights, 'co_onset_epoch': onset,
             'train_time_s': sum(r['train_time_s'] for r in history), **final}
  run_log.write_json(workdir, run_log.RESULTS, results)
  log.info('Final (epoch %d, %s weights, n=%d, eps=%.4f): clean %.4f  FGSM %.4f  PGD-%d-%d %.4f',
           ts_epoch, weights, final['n'], settings.eps, final['clean_accuracy'],
           final['fgsm_accuracy'], settings.steps, settings.restarts, final['pgd_accuracy'])
  return results
