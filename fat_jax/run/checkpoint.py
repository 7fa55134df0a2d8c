"""Orbax checkpoints of the train state, one per completed epoch, verified on restore.

After orbax has finished a checkpoint, process 0 writes its manifest (``CHECKSUM``,
atomically): one ``SHA-256  relative path`` line per file orbax wrote, the format of
``sha256sum``. Restoring verifies it: a checkpoint with a file changed or missing since (a
flipped byte, a torn copy) is corrupt, and `latest_verified_epoch` falls back to the newest one
that verifies, with a warning naming the bad one and its files, which training moves aside into
``workdir/checkpoints.corrupt/`` (never deleted). A file the manifest does not list (a
``.DS_Store``) is named as extra and ignored. A checkpoint that verifies but does not fit the
state it is restored into is a config mismatch (`CheckpointMismatchError`), not damage.
Checkpoints written before checksums existed restore with a warning, as unverified; those whose
checksum file holds one SHA-256 over the whole directory (written before manifests) verify
against it.

Layout of ``checkpoints/<epoch>``: item 'state' = the `TrainState` fields step, params,
batch_stats and opt_state (the optax optimiser state; for the torch SGD `optim.TorchSGDState`:
count and momentum buffers 'trace'), item 'examples' = the per-example state when the method
keeps one, item 'ema' = the weight average of the params when the run keeps one (runs
without one, and checkpoints written before it, have no such item), item 'regularizer_state'
= the regularisers' state across steps when the method keeps one (ELLE-A's λ and statistics),
item 'data_iterator' = the streaming input path's grain iterator state (JSON) when the run
streams its data, item 'guard_snapshots' = the CO guard's rollback snapshots
(`fat_jax.run.co_guard`) when it holds some: {'0': the oldest, '1', ...}, each laid out as the train state's items.
Checkpoints written before the optax state hold the momentum buffers as a field 'momentum'
instead of 'opt_state'; they restore into a torch-SGD state (count = step).
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
from fat_jax.run import run_log

log = logging.getLogger('fat_jax')

CHECKSUM = 'fat_jax_checksum.sha256'
CORRUPT_DIR = 'checkpoints.corrupt'


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's files no longer match the checksum written with them."""


class CheckpointMismatchError(CheckpointError, ValueError):
  """An intact checkpoint does not fit the state it is restored into (another model config)."""


def _files(path: str) -> list[str]:
  """The relative paths of every file under `path` (sorted), the checksum file excepted."""
  files = sorted(os.path.relpath(os.path.join(root, name), path)
                 for root, _, names in os.walk(path) for name in names)
  return [rel for rel in files if rel not in (CHECKSUM, CHECKSUM + '.tmp')]


def _update(digest, path: str):
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest


def directory_digest(path: str) -> str:
  """SHA-256 over the relative paths and contents of every file under `path` (sorted), the
  checksum file excepted: the checksum of checkpoints written before manifests."""
  digest = hashlib.sha256()
  for rel in _files(path):
    digest.update(rel.encode() + b'\0')
    _update(digest, os.path.join(path, rel))
  return digest.hexdigest()


def manifest(path: str) -> dict[str, str]:
  """{relative path: SHA-256 of its content} of every file under `path`, the checksum file
  excepted."""
  return {rel: _update(hashlib.sha256(), os.path.join(path, rel)).hexdigest()
          for rel in _files(path)}


def _read_manifest(text: str) -> dict[str, str] | str:
  """A checksum file's content: the manifest, or the single directory digest of the format
  before manifests."""
  lines = text.splitlines()
  if len(lines) == 1 and ' ' not in lines[0].strip():
    return lines[0].strip()
  return {rel: digest for digest, _, rel in (line.partition('  ') for line in lines if line)}


def compare(stored: dict[str, str], found: dict[str, str]) -> tuple[list[str], list[str]]:
  """(problems, extra files) of the files `found` against the manifest `stored`: 'changed: F'
  and 'missing: F' for each file of the manifest that differs or is absent; the extra files
  are those the manifest does not list."""
  problems = [f'{"missing" if rel not in found else "changed"}: {rel}'
              for rel, digest in stored.items() if found.get(rel) != digest]
  return problems, sorted(set(found) - set(stored))


DATA_ITEM = 'data_iterator'  # the streaming input path's iterator state (JSON)
SNAPSHOTS_ITEM = 'guard_snapshots'  # the CO guard's rollback snapshots

# The TrainState fields stored as items of their own, each only when it is not empty.
APART = ('examples', 'ema', 'regularizer_state')


def _items(state) -> dict:
  """A `TrainState` as checkpoint items: 'state' and, when it has them, the per-example state
  'examples' (stored apart, so that evaluation restores the model without it), the weight
  average 'ema' and the regularisers' state 'regularizer_state' (ELLE-A's λ)."""
  fields = state._asdict()
  apart = {name: fields.pop(name, {}) for name in APART}
  return {'state': fields, **{name: tree for name, tree in apart.items() if tree}}


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


def _listing(items: list[str], limit: int = 5) -> str:
  return ', '.join(items[:limit]) + (f' and {len(items) - limit} more' if len(items) > limit
                                     else '')


class Checkpointer:
  """Saves `TrainState`s under ``workdir/checkpoints/<epoch>``; keeps the last `keep`.

  A context manager: ``with Checkpointer(workdir) as c:`` closes it (waiting for orbax's
  background work) however the block ends.
  """

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

  def save(self, epoch: int, state, data_state: dict | None = None, snapshots=()) -> None:
    """Saves `state` as checkpoint `epoch`, with the input pipeline's iterator state
    `data_state` (JSON values; the streaming path's, item 'data_iterator') when given and the
    CO guard's `snapshots` (train states, item 'guard_snapshots') when there are some."""
    items = {k: ocp.args.StandardSave(v) for k, v in _items(state).items()}
    if data_state is not None:
      items[DATA_ITEM] = ocp.args.JsonSave(data_state)
    if snapshots:
      items[SNAPSHOTS_ITEM] = ocp.args.StandardSave(
          {str(i): _items(s) for i, s in enumerate(snapshots)})
    self._manager.save(epoch, args=ocp.args.Composite(**items))
    self._manager.wait_until_finished()
    if is_writer():
      run_log.atomic_write(os.path.join(self.path(epoch), CHECKSUM), ''.join(
          f'{digest}  {rel}\n' for rel, digest in manifest(self.path(epoch)).items()))

  def data_state(self, epoch: int) -> dict | None:
    """The input pipeline's iterator state saved with checkpoint `epoch` (None: none saved)."""
    if not os.path.isdir(os.path.join(self.path(epoch), DATA_ITEM)):
      return None
    restored = self._manager.restore(epoch, args=ocp.args.Composite(
        **{DATA_ITEM: ocp.args.JsonRestore()}))
    return restored[DATA_ITEM]

  def snapshots(self, epoch: int, like, count: int) -> list | None:
    """The `count` CO guard snapshots saved with checkpoint `epoch` (oldest first), restored
    with the structure, dtypes and shardings of `like`; None when it holds none (written
    before checkpoints held them)."""
    if not os.path.isdir(os.path.join(self.path(epoch), SNAPSHOTS_ITEM)):
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _items(like))
    restored = self._manager.restore(epoch, args=ocp.args.Composite(**{
        SNAPSHOTS_ITEM: ocp.args.StandardRestore({str(i): abstract for i in range(count)})}))
    return [type(like)(**r['state'], **{name: r.get(name, {}) for name in APART})
            for r in (restored[SNAPSHOTS_ITEM][str(i)] for i in range(count))]

  def has_ema(self, epoch: int) -> bool:
    """Whether checkpoint `epoch` holds a weight average (item 'ema')."""
    return os.path.isdir(os.path.join(self.path(epoch), 'ema'))

  def check(self, epoch: int) -> tuple[list[str], list[str]] | None:
    """(problems, extra files) of checkpoint `epoch` against its checksum file (`compare`; a
    directory digest that differs is the problem 'its files changed'); None when it has none
    (older runs, or a save cut short before it)."""
    checksum = os.path.join(self.path(epoch), CHECKSUM)
    if not os.path.exists(checksum):
      return None
    with open(checksum) as f:
      stored = _read_manifest(f.read())
    if isinstance(stored, str):
      return ([] if stored == directory_digest(self.path(epoch)) else ['its files changed']), []
    return compare(stored, manifest(self.path(epoch)))

  def verify(self, epoch: int) -> bool | None:
    """Whether checkpoint `epoch` matches its checksum file (files it does not list are
    ignored); None when it has none."""
    checked = self.check(epoch)
    return None if checked is None else not checked[0]

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
      checked = self.check(epoch)
      if checked is None:
        log.warning('Checkpoint %s has no checksum (written by an older fat_jax, or its save was '
                    'cut short): using it unverified.', self.path(epoch))
      elif checked[1]:
        log.warning('Checkpoint %s holds files it was not written with, ignored: %s.',
                    self.path(epoch), _listing(checked[1]))
      if checked and checked[0]:
        log.warning('Checkpoint %s fails its checksum (corrupted after it was written: %s); '
                    'falling back to an earlier one.', self.path(epoch), _listing(checked[0]))
        bad.append(epoch)
        continue
      good = epoch
      break
    if bad and set_aside:
      self._set_aside(bad)
    elif bad and good is None:
      raise CorruptCheckpointError(
          f'No checkpoint in {self.directory} verifies: epochs {sorted(bad)} fail their '
          'checksums. Retrain in a new --workdir, or restore the files from a backup.')
    return good

  def delete_after(self, epoch: int) -> None:
    """Delete the checkpoints of the epochs after `epoch` (training writes them again)."""
    for later in self.epochs():
      if later > epoch:
        self._manager.delete(later)
    self._manager.reload()

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
    `TrainState`; its per-example state and weight average only if `like` has them), after
    verifying it."""
    path = self.path(epoch)
    checked = self.check(epoch)
    if checked and checked[0]:
      raise CorruptCheckpointError(f'Checkpoint {path} fails its checksum ({_listing(checked[0])})'
                                   ': its files changed after it was written.')
    verified = checked is not None
    items = _items(like)
    try:
      restored = self._restore(epoch, items, like.examples)
    except Exception as e:  # orbax raises many types for unreadable or mismatched files
      restored = self._restore_momentum_layout(epoch, items, like)
      if restored is None:
        raise self._restore_error(epoch, verified, like, e) from e
    return type(like)(**restored['state'], **{name: restored.get(name, {}) for name in APART})

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

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
