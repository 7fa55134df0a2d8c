"""The catastrophic-overfitting guard in the loop: `GuardedStep` wraps the train step, and every
`guard.every` steps measures the CO signals on the guard's fixed batch (`methods.signals`,
`guard_batch`), runs the detector on each and applies the policy (`methods.guard`); each check
is a record of ``signals.jsonl`` in the workdir, and `epoch_summary` gives the epoch's counts for
``metrics.jsonl``.

The weight scale of 'adaptive' is a traced argument of the jitted step (one compilation for
every scale). 'rollback' keeps the states of the last checks in memory (copies: the step
donates its input) and restores one with the clock (`step`) of the current state, so that the
schedule, the step keys and the epochs go on as planned; the switched method is compiled once.
A resumed run replays ``signals.jsonl`` (the detector's values, the scale, whether it switched)
and takes the snapshots from the checkpoint (`snapshot_steps`, `restore_snapshots`), so that it
continues bit for bit as the uninterrupted run.
"""
from __future__ import annotations

import collections
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.methods.guard import Adaptive, Guard, Rollback, scaled_method, switched_method
from fat_jax.methods.signals import measure
from fat_jax.run import run_log

log = logging.getLogger('fat_jax')


class Rows:
  """The rows `indices` of a random-access source, itself one (picklable: grain's workers read
  it)."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[int(self.indices[index])]


def guard_batch(data, guard: Guard):
  """(the data set, (x, y)): the guard's batch of n = `guard.batch_size` training examples as
  [0, 1] floats (no augmentation), left out of the returned training set when `hold_out`.

  In memory: the last n examples. Streamed (`fat_jax.data.StreamingDataset`): the examples
  ⌊i·N/n⌋, i < n, of the N of the unshuffled training source (a folder's files are sorted by
  class: these span the classes), read as the evaluation reads its test subset (the test-time
  host transform)."""
  n, count = guard.batch_size, data.num_train
  if n >= count:
    raise ValueError(f'guard.batch_size={n} leaves no training examples of the {count}.')
  if isinstance(getattr(data, 'train_images', None), np.ndarray):
    batch = (data.train_images[-n:].astype(np.float32) / 255, data.train_labels[-n:])
    if guard.hold_out:
      data = dataclasses.replace(data, train_images=data.train_images[:-n],
                                 train_labels=data.train_labels[:-n])
    return data, batch
  held = np.arange(n) * count // n
  images, labels = dataclasses.replace(data, test=Rows(data.train, held)).test_subset(n)
  if guard.hold_out:
    data = dataclasses.replace(data, train=Rows(data.train, np.setdiff1d(np.arange(count), held)))
  return data, (np.asarray(images, np.float32) / 255, np.asarray(labels))


def feature_nodes(model) -> list[str]:
  """The feature nodes of `model`'s forward (shapes only, nothing computed)."""
  params, state = jax.eval_shape(model.init, jax.random.key(0))
  x = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
  return list(jax.eval_shape(lambda p, s, x: model.apply(p, s, x, False)[2], params, state, x))


def snapshot(ts):
  """A copy of the train state that the step's donation leaves intact."""
  return jax.tree.map(jnp.copy, ts)


class GuardedStep:
  """``(ts, images, labels, indices) -> (ts, metrics)`` like the train step, with the guard.

  `build_step(method)`: the unjitted train step of a method (`methods.make_train_step`);
  `model` (`fat_jax.models.Model`), `eps`: the signals' model and radius; `key`: the signals'
  key (folded with the step); `records`: the run's ``signals.jsonl`` records so far, replayed:
  `snapshot_steps` are then the steps of the snapshots the run held (`restore_snapshots`).
  """

  def __init__(self, guard: Guard, method, build_step, model, batch, *, eps: float, key,
               workdir: str, steps_per_epoch: int, records=()):
    nodes = feature_nodes(model)
    for s in guard.signals:
      if getattr(s, 'node', None) is not None and s.node not in nodes:
        raise ValueError(f'guard.node {s.node!r} (V_act) is not a feature node of model '
                         f'{type(model.module).__name__} (it has {sorted(nodes)}).')
    self.guard, self.method, self.build_step = guard, method, build_step
    self.apply_fn, self.eps, self.key = model.apply, float(eps), key
    self.x, self.y = jnp.asarray(batch[0]), jnp.asarray(batch[1])
    self.workdir, self.steps_per_epoch = workdir, steps_per_epoch
    self.history = {name: [] for name in guard.names}
    self.scale, self.switched, self.count = 0.0, False, None
    kept = guard.policy.snapshots if isinstance(guard.policy, Rollback) else 0
    self.snapshots = collections.deque(maxlen=kept)
    self.snapshot_steps = collections.deque(maxlen=kept)
    self.triggers, self.rollbacks = collections.Counter(), []
    for r in records:
      self._replay(r)
    self.snapshot_steps = list(self.snapshot_steps)
    self.triggers, self.rollbacks = collections.Counter(), []
    self._step = self._compile()

  def _compile(self):
    if isinstance(self.guard.policy, Adaptive):
      method, build = self.method, self.build_step
      return jax.jit(lambda ts, scale, *batch: build(scaled_method(method, scale))(ts, *batch),
                     donate_argnums=0)
    return jax.jit(self.build_step(self.method), donate_argnums=0)

  def _replay(self, record: dict) -> None:
    """The guard's state after a check logged in `record`."""
    for name in self.guard.names:
      self.history[name].append(record[name])
    self.scale = record.get('scale', self.scale)
    if record.get('rollback'):
      self._switch()
    elif isinstance(self.guard.policy, Rollback) and not self.switched:
      self.snapshot_steps.append(record['step'])  # the check kept its state (`check`)

  def _switch(self) -> None:
    self.method = switched_method(self.method, self.guard.policy.switch)
    self.switched = True
    self.history = {name: [] for name in self.guard.names}
    self.snapshots.clear()
    self.snapshot_steps.clear()

  def restore_snapshots(self, states) -> None:
    """Hold `states` (oldest first), the snapshots saved with the checkpoint the run resumes
    from, as those of the checks at `snapshot_steps`."""
    steps = [int(s.step) for s in states]
    if steps != self.snapshot_steps:
      raise ValueError(f'The checkpoint holds the guard snapshots of steps {steps}; '
                       f'{run_log.SIGNALS} says {self.snapshot_steps}.')
    self.snapshots.extend(states)

  def __call__(self, ts, *batch):
    if self.count is None:
      self.count = int(ts.step)
    if isinstance(self.guard.policy, Adaptive):
      ts, metrics = self._step(ts, jnp.float32(self.scale), *batch)
      metrics = {**metrics, 'guard_scale': jnp.float32(self.scale)}
    else:
      ts, metrics = self._step(ts, *batch)
    self.count += 1
    if self.count % self.guard.every == 0:
      ts = self.check(ts, self.count)
    return ts, metrics

  def check(self, ts, step: int):
    """Measure, detect, act at `step`; returns the state training goes on from."""
    g = self.guard
    values = measure(g.signals, self.apply_fn, ts.params, ts.batch_stats, self.x, self.y,
                     jax.random.fold_in(self.key, step), self.eps)
    values = {name: float(v) for name, v in values.items()}
    triggered = [name for name in g.names
                 if g.detector.triggered(self.history[name], values[name], g.direction(name))]
    for name in g.names:
      self.history[name].append(values[name])
    self.triggers.update(triggered)
    act = any(name in triggered for name in g.act_on)
    record = {'epoch': step / self.steps_per_epoch, 'step': step, **values,
              'triggered': triggered}
    if isinstance(g.policy, Adaptive):
      self.scale = g.policy.next_scale(self.scale, act, g.every)
      record['scale'] = self.scale
    elif isinstance(g.policy, Rollback) and not self.switched:
      if act and self.snapshots:
        target = self.snapshots[-min(g.policy.checks_back, len(self.snapshots))]
        record['rollback'] = {'to_step': int(target.step), 'switch': g.policy.switch}
        ts = target._replace(step=ts.step)
        method = self.method
        self._switch()
        if self.method != method:
          self._step = self._compile()
        self.rollbacks.append(record['rollback'] | {'at_step': step})
        log.info('CO guard: %s triggered at step %d; rolled back to step %d, switch %r.',
                 '/'.join(triggered), step, record['rollback']['to_step'], g.policy.switch)
      else:
        self.snapshots.append(snapshot(ts))
    run_log.append_record(self.workdir, record, name=run_log.SIGNALS)
    return ts

  def epoch_summary(self) -> dict:
    """The guard's counts since the last call, for the epoch's metrics record: the triggers per
    signal and the rollbacks ({at_step, to_step, switch})."""
    out = {'guard_triggers': dict(self.triggers), 'guard_rollbacks': self.rollbacks}
    self.triggers, self.rollbacks = collections.Counter(), []
    return out
