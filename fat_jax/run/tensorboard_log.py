"""TensorBoard event files of a run: every number of the records the loop appends to
``metrics.jsonl`` (per epoch) and ``monitor.jsonl`` (every ``eval.monitor_every_steps``
steps) as a scalar at the run's global training step, in ``WORKDIR/tensorboard``
(``tensorboard --logdir runs/`` shows every run under ``runs/``). Written with tensorboardX
(no TensorFlow); only process 0 writes (`fat_jax.parallel.is_writer`).

A tag is the record's key (``train_loss``, ``pgd_accuracy``, ``lr``); a dict or list value
gives one tag per entry (``vact/A``, ``train_lap_norm/0``), a boolean 0 or 1. The x-axes
(``epoch``, ``step``), the monitor's settings (``monitor``) and text are left out. The
end-of-run report's figures go in as images (``report/accuracy``, ...) at the evaluated step. A resumed
run writes a new event file whose first event purges, in TensorBoard's reader, the steps the
interrupted run logged after its last checkpoint, so no step appears twice.
"""
from __future__ import annotations

import glob
import os
import weakref

import matplotlib.image

from fat_jax.parallel import is_writer

DIR = 'tensorboard'
NOT_SCALARS = ('epoch', 'step', 'monitor')


def scalars(record: dict) -> dict[str, float]:
  """The numbers of `record` as ``{tag: value}`` (see the module doc)."""
  out = {}

  def add(tag: str, value) -> None:
    if isinstance(value, dict):
      for key, v in value.items():
        add(f'{tag}/{key}', v)
    elif isinstance(value, (list, tuple)):
      for i, v in enumerate(value):
        add(f'{tag}/{i}', v)
    elif isinstance(value, (bool, int, float)):
      out[tag] = float(value)

  for key, value in record.items():
    if key not in NOT_SCALARS:
      add(key, value)
  return out


class EventLog:
  """Scalars into ``WORKDIR/tensorboard``: ``write(record, step)`` per record, flushed at once.

  `first_step` is the first global step this session logs (``start_epoch · steps + 1`` on a
  resumption, 1 for a new run): when the folder already holds event files, the new file
  starts with tensorboardX's ``purge_step`` = `first_step`, which hides their events at steps
  ≥ `first_step` (0: purges nothing, for the report's figures). The file is created at the
  first write; with `enabled` False (or on a
  process other than 0) nothing is written.
  """

  def __init__(self, workdir: str, first_step: int, enabled: bool = True):
    self.logdir = os.path.join(workdir, DIR)
    self.first_step = first_step
    self.enabled = enabled and is_writer()
    self._writer = self._close = None
    self.closed = False

  def _open(self):
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError('config.tensorboard=True writes with tensorboardX, which is not '
                        'installed: pip install tensorboardX, or set '
                        '--config.tensorboard=False.') from None
    earlier = glob.glob(os.path.join(self.logdir, 'events.out.tfevents.*'))
    # A name of its own (tensorboardX names a file by the second and the host, so a second
    # session within the same second would overwrite the first), read after the earlier ones.
    writer = SummaryWriter(self.logdir,
                           purge_step=self.first_step if earlier and self.first_step else None,
                           filename_suffix=f'.from_step_{self.first_step:09d}')
    self._close = weakref.finalize(self, writer.close)  # also when the run ends in an error
    return writer

  def write(self, record: dict, step: int) -> None:
    if self.closed:
      raise ValueError(f'The event log of {self.logdir} is closed.')
    if not self.enabled:
      return
    if self._writer is None:
      self._writer = self._open()
    for tag, value in scalars(record).items():
      self._writer.add_scalar(tag, value, global_step=step)
    self._writer.flush()

  def write_figures(self, folder: str, step: int) -> list[str]:
    """Every PNG of `folder` (the run's report figures) as an image tagged ``report/<name>`` at
    `step`; returns the tags written."""
    if not self.enabled:
      return []
    if self._writer is None:
      self._writer = self._open()
    tags = []
    for path in sorted(glob.glob(os.path.join(folder, '*.png'))):
      tag = 'report/' + os.path.basename(path)[:-len('.png')]
      self._writer.add_image(tag, matplotlib.image.imread(path)[..., :3], global_step=step,
                             dataformats='HWC')
      tags.append(tag)
    self._writer.flush()
    return tags

  def close(self) -> None:
    if self._close is not None:
      self._close()  # once: a finalizer runs at most once
    self._writer, self._close, self.closed = None, None, True
