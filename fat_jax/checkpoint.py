"""Orbax checkpoints of the train state, one per completed epoch."""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class CorruptCheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored."""


def _items(state) -> dict:
  """A `TrainState` as checkpoint items: 'state' and, when it has one, the per-example state
  'examples' (stored apart, so that evaluation restores the model without it)."""
  fields = state._asdict()
  examples = fields.pop('examples')
  return {'state': fields, **({'examples': examples} if examples else {})}


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
    abstract = {k: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, v))
                for k, v in _items(like).items()}
    try:
      if os.path.isdir(os.path.join(self.directory, str(epoch), 'state')):
        restored = self._manager.restore(epoch, args=ocp.args.Composite(**abstract))
      else:  # written before per-example state: one unnamed item, the state without it
        restored = {'state': self._manager.restore(epoch, args=abstract['state']),
                    'examples': like.examples}
    except Exception as e:  # orbax raises many types for unreadable files
      raise CorruptCheckpointError(
          f'Cannot restore the checkpoint of epoch {epoch} in {self.directory}: {e}. Delete '
          f'{os.path.join(self.directory, str(epoch))} to resume from an earlier epoch, or '
          'start in a new --workdir.') from e
    return type(like)(**restored['state'], examples=restored.get('examples', {}))

  def close(self) -> None:
    self._manager.close()
