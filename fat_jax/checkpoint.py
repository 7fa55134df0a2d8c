"""Orbax checkpoints of the train state, one per completed epoch.

Layout of ``checkpoints/<epoch>``: item 'state' = the `TrainState` fields step,
params, batch_stats and opt_state (the optax optimiser state; for the torch SGD
`optim.TorchSGDState`: count and momentum buffers 'trace'), item 'examples' = the
per-example state when the method keeps one. Checkpoints written before the
optax state hold the momentum buffers as a field 'momentum' instead of
'opt_state'; they restore into a torch-SGD state (count = step).
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from fat_jax import optim


class CorruptCheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored."""


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


class Checkpointer:
  """Saves `TrainState`s under ``workdir/checkpoints/<epoch>``; keeps the last `keep`."""

  def __init__(self, workdir: str, keep: int = 2):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_epoch(self):
    return self._manager.latest_step()

  def epochs(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, epoch: int, state) -> None:
    self._manager.save(epoch, args=ocp.args.Composite(
        **{k: ocp.args.StandardSave(v) for k, v in _items(state).items()}))
    self._manager.wait_until_finished()

  def restore(self, epoch: int, like):
    """Restore epoch `epoch` with the structure, dtypes and shardings of `like` (a
    `TrainState`; its per-example state only if `like` has one)."""
    items = _items(like)
    try:
      restored = self._restore(epoch, items, like.examples)
    except Exception as e:  # orbax raises many types for unreadable files
      if not isinstance(like.opt_state, optim.TorchSGDState):
        raise self._corrupt(epoch, e) from e
      try:
        restored = self._restore(epoch, _momentum_layout(items), like.examples)
      except Exception:  # not the earlier layout either: report the first error
        raise self._corrupt(epoch, e) from e
      restored = {**restored, 'state': _from_momentum_layout(restored['state'])}
    return type(like)(**restored['state'], examples=restored.get('examples', {}))

  def _restore(self, epoch: int, items: dict, examples) -> dict:
    abstract = {k: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, v))
                for k, v in items.items()}
    if os.path.isdir(os.path.join(self.directory, str(epoch), 'state')):
      restored = self._manager.restore(epoch, args=ocp.args.Composite(**abstract))
      return {k: restored[k] for k in abstract if k in restored}
    # Written before per-example state: one unnamed item, the state without it.
    return {'state': self._manager.restore(epoch, args=abstract['state']), 'examples': examples}

  def _corrupt(self, epoch: int, error: Exception) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f'Cannot restore the checkpoint of epoch {epoch} in {self.directory}: {error}. Delete '
        f'{os.path.join(self.directory, str(epoch))} to resume from an earlier epoch, or '
        'start in a new --workdir.')

  def close(self) -> None:
    self._manager.close()
