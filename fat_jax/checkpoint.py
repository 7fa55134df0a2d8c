"""Orbax checkpoints of the train state, one per completed epoch, verified on restore.

After orbax has finished a checkpoint, process 0 writes a SHA-256 of every file of its
directory (``CHECKSUM``, atomically). Restoring verifies it: a checkpoint whose files changed
since (a flipped byte, a torn copy) is corrupt, and `latest_verified_epoch` falls back to the
newest one that verifies, with a warning naming the bad one, which training moves aside into
``workdir/checkpoints.corrupt/`` (never deleted). A checkpoint that verifies but does not fit
the state it is restored into is a config mismatch (`CheckpointMismatchError`), not damage.
Checkpoints written before checksums existed restore with a warning.

Layout of ``checkpoints/<epoch>``: item 'state' = the `TrainState` fields step, params,
batch_stats and opt_state (the optax optimiser state; for the torch SGD `optim.TorchSGDState`:
count and momentum buffers 'trace'), item 'examples' = the per-example state when the method
keeps one. Checkpoints written before the optax state hold the momentum buffers as a field
'momentum' instead of 'opt_state'; they restore into a torch-SGD state (count = step).
"""
from __future__ import annotations

import hashlib
import logging
import os

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from fat_jax import optim
from fat_jax.parallel import is_writer

log = logging.getLogger('fat_jax')

CHECKSUM = 'fat_jax_checksum.sha256'
CORRUPT_DIR = 'checkpoints.corrupt'


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's files no longer match the checksum written with them."""


class CheckpointMismatchError(CheckpointError, ValueError):
  """An intact checkpoint does not fit the state it is restored into (another model config)."""


def directory_digest(path: str) -> str:
  """SHA-256 over the relative paths and contents of every file under `path` (sorted), the
  checksum file excepted."""
  digest = hashlib.sha256()
  files = sorted(os.path.relpath(os.path.join(root, name), path)
                 for root, _, names in os.walk(path) for name in names)
  for rel in files:
    if rel in (CHECKSUM, CHECKSUM + '.tmp'):
      continue
    digest.update(rel.encode() + b'\0')
    with open(os.path.join(path, rel), 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  return digest.hexdigest()


def _items(state) -> dict:
  """A `TrainState` as checkpoint items: 'state' and, when it has one, the per-example state
  'examples' (stored apart, so that evaluation restores the model without it)."""
  fields = state._asdict()
  examples = fields.pop('examples')
  return {'state': fields, **({'examples': examples} if examples else {})}


def _momentum_layout(items: dict) -> dict:
  """`items` with the torch-SGD state as the field 'momentum' (the layout before optax)."""
  fields = dict(items['state'])
  fields['momentum'] = fields.pop('opt_state').trace
  return {**items, 'state': fields}


def _from_momentum_layout(fields: dict) -> dict:
  fields = dict(fields)
  fields['opt_state'] = optim.TorchSGDState(fields['step'], fields.pop('momentum'))
  return fields


def _shape_differences(stored, wanted, limit: int = 5) -> list[str]:
  """'path: stored shape vs wanted shape' for leaves whose shape or presence differs."""
  def shapes(tree):
    return {jax.tree_util.keystr(p): tuple(getattr(v, 'shape', ()))
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  a, b = shapes(stored), shapes(wanted)
  diff = [f'{k}: {a.get(k, "absent")} stored, {b.get(k, "absent")} wanted'
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  return diff[:limit] + ([f'... {len(diff) - limit} more'] if len(diff) > limit else [])


class Checkpointer:
  """Saves `TrainState`s under ``workdir/checkpoints/<epoch>``; keeps the last `keep`."""

  def __init__(self, workdir: str, keep: int = 2):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def path(self, epoch: int) -> str:
    return os.path.join(self.directory, str(epoch))

  def latest_epoch(self):
    return self._manager.latest_step()

  def epochs(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, epoch: int, state) -> None:
    self._manager.save(epoch, args=ocp.args.Composite(
        **{k: ocp.args.StandardSave(v) for k, v in _items(state).items()}))
    self._manager.wait_until_finished()
    if is_writer():
      path = os.path.join(self.path(epoch), CHECKSUM)
      with open(path + '.tmp', 'w') as f:
        f.write(directory_digest(self.path(epoch)) + '\n')
      os.replace(path + '.tmp', path)

  def verify(self, epoch: int) -> bool | None:
    """Whether checkpoint `epoch` matches its checksum; None when it has none (older runs)."""
    checksum = os.path.join(self.path(epoch), CHECKSUM)
    if not os.path.exists(checksum):
      return None
    with open(checksum) as f:
      return f.read().strip() == directory_digest(self.path(epoch))

  def latest_verified_epoch(self, set_aside: bool = False):
    """The newest epoch whose checkpoint verifies (or has no checksum), None if there is none.

    Each newer one that fails its checksum gets a warning; with `set_aside` (training, which
    will write those epochs again) it moves into ``workdir/checkpoints.corrupt/``, else
    (evaluation) a run with checkpoints but none that verifies raises
    `CorruptCheckpointError`.
    """
    epochs, bad = self.epochs(), []
    good = None
    for epoch in reversed(epochs):
      verified = self.verify(epoch)
      if verified is False:
        log.warning('Checkpoint %s fails its checksum (corrupted after it was written); '
                    'falling back to an earlier one.', self.path(epoch))
        bad.append(epoch)
        continue
      if verified is None:
        log.warning('Checkpoint %s has no checksum (written by an older fat_jax): restoring it '
                    'unverified.', self.path(epoch))
      good = epoch
      break
    if bad and set_aside:
      self._set_aside(bad)
    elif bad and good is None:
      raise CorruptCheckpointError(
          f'No checkpoint in {self.directory} verifies: epochs {sorted(bad)} fail their '
          'checksums. Retrain in a new --workdir, or restore the files from a backup.')
    return good

  def _set_aside(self, epochs) -> None:
    if jax.process_count() > 1:  # every process has verified before process 0 moves
      multihost_utils.sync_global_devices('fat_jax checkpoint verification')
    if is_writer():
      target = os.path.join(self.workdir, CORRUPT_DIR)
      os.makedirs(target, exist_ok=True)
      for epoch in epochs:
        name, n = str(epoch), 1
        while os.path.exists(os.path.join(target, name)):
          name, n = f'{epoch}-{n}', n + 1
        os.replace(self.path(epoch), os.path.join(target, name))
        log.warning('Moved the corrupted checkpoint of epoch %d to %s.', epoch,
                    os.path.join(target, name))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('fat_jax checkpoints set aside')
    self._manager.reload()

  def restore(self, epoch: int, like):
    """Restore epoch `epoch` with the structure, dtypes and shardings of `like` (a
    `TrainState`; its per-example state only if `like` has one), after verifying it."""
    path = self.path(epoch)
    verified = self.verify(epoch)
    if verified is False:
      raise CorruptCheckpointError(f'Checkpoint {path} fails its checksum: its files changed '
                                   'after it was written.')
    items = _items(like)
    try:
      restored = self._restore(epoch, items, like.examples)
    except Exception as e:  # orbax raises many types for unreadable or mismatched files
      restored = self._restore_momentum_layout(epoch, items, like)
      if restored is None:
        raise self._restore_error(epoch, verified, like, e) from e
    return type(like)(**restored['state'], examples=restored.get('examples', {}))

  def _restore(self, epoch: int, items: dict, examples) -> dict:
    abstract = {k: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, v))
                for k, v in items.items()}
    if os.path.isdir(os.path.join(self.path(epoch), 'state')):
      restored = self._manager.restore(epoch, args=ocp.args.Composite(**abstract))
      return {k: restored[k] for k in abstract if k in restored}
    # Written before per-example state: one unnamed item, the state without it.
    return {'state': self._manager.restore(epoch, args=abstract['state']), 'examples': examples}

  def _restore_momentum_layout(self, epoch: int, items: dict, like):
    """The restored items of a checkpoint written before the optax state, or None."""
    if not isinstance(like.opt_state, optim.TorchSGDState):
      return None
    try:
      restored = self._restore(epoch, _momentum_layout(items), like.examples)
    except Exception:  # pylint: disable=broad-except  # not that layout either
      return None
    return {**restored, 'state': _from_momentum_layout(restored['state'])}

  def _restore_error(self, epoch: int, verified, like, error: Exception) -> CheckpointError:
    path = self.path(epoch)
    try:
      stored = self._manager.item_metadata(epoch)
      differences = _shape_differences(
          {k: stored[k] for k in _items(like) if k in stored}, _items(like))
    except Exception:  # pylint: disable=broad-except  # metadata unreadable: orbax's message
      differences = []
    reason = '; '.join(differences) or str(error).strip().splitlines()[0][:300]
    config = os.path.join(self.workdir, 'config.json')
    if verified:
      return CheckpointMismatchError(
          f'Checkpoint {path} is intact (its checksum verifies) but does not fit the model '
          f'being restored ({reason}): use the config the run was trained with ({config}).')
    return CheckpointError(
        f'Cannot restore checkpoint {path} ({reason}). It has no checksum, so damaged files '
        f'and a model config other than the run\'s ({config}) are both possible; check the '
        'config first.')

  def close(self) -> None:
    self._manager.close()
