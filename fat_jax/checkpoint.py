"""Orbax checkpoints of the train state, one per completed epoch."""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class CorruptCheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored."""


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
    self._manager.save(epoch, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def restore(self, epoch: int, like):
    """Restore epoch `epoch` with the structure, dtypes and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      restored = self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for unreadable files
      raise CorruptCheckpointError(
          f'Cannot restore the checkpoint of epoch {epoch} in {self.directory}: {e}. Delete '
          f'{os.path.join(self.directory, str(epoch))} to resume from an earlier epoch, or '
          'start in a new --workdir.') from e
    return type(like)(*restored) if isinstance(like, tuple) else restored

  def close(self) -> None:
    self._manager.close()
