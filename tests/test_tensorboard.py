"""TensorBoard event files (`fat_jax.run.tensorboard_log`), read back with TensorBoard's own
reader: every number of metrics.jsonl and monitor.jsonl at its global step, once, also after a
resumption."""
import os
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fat_jax.reports import report

from fat_jax.run import run_log, tensorboard_log
from fat_jax.run.train import train_and_evaluate
from tests.test_train import data_dir, tiny_config  # pylint: disable=unused-import


def read_events(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} as TensorBoard shows them (purged steps dropped)."""
  events = EventAccumulator(os.path.join(workdir, tensorboard_log.DIR), size_guidance={
      'scalars': 0})
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
          for tag in events.Tags()['scalars']}


def test_scalars_flattens_dicts_and_lists_and_leaves_out_axes_settings_and_text():
  record = {'epoch': 2, 'step': 8, 'train_loss': 1.5, 'lr': 0.1, 'vact': {'A': 0.5, 'B': 2},
            'train_lap_norm': [0.1, 0.2], 'co_detected': True, 'monitor': {'n': 16},
            'evaluated_weights': 'model', 'reported': None}
  assert tensorboard_log.scalars(record) == {
      'train_loss': 1.5, 'lr': 0.1, 'vact/A': 0.5, 'vact/B': 2.0, 'train_lap_norm/0': 0.1,
      'train_lap_norm/1': 0.2, 'co_detected': 1.0}


def test_a_resumed_log_purges_the_steps_after_the_checkpoint(tmp_path):
  first = tensorboard_log.EventLog(str(tmp_path), first_step=1)
  for epoch in (1, 2, 3):  # epoch 3 logged, then the run stopped before its checkpoint
    first.write({'epoch': epoch, 'loss': float(epoch)}, step=4 * epoch)
  first.close()
  resumed = tensorboard_log.EventLog(str(tmp_path), first_step=2 * 4 + 1)
  for epoch in (3, 4):
    resumed.write({'epoch': epoch, 'loss': 10.0 * epoch}, step=4 * epoch)
  resumed.close()
  assert read_events(str(tmp_path)) == {'loss': [(4, 1.0), (8, 2.0), (12, 30.0), (16, 40.0)]}
  with pytest.raises(ValueError, match='closed'):
    resumed.write({'loss': 1.0}, step=20)


def test_disabled_writes_nothing(tmp_path):
  events = tensorboard_log.EventLog(str(tmp_path), first_step=1, enabled=False)
  events.write({'loss': 1.0}, step=1)
  events.close()
  assert not os.path.exists(tmp_path / tensorboard_log.DIR)


def assert_events_match_the_records(workdir: str, steps: int) -> None:
  expected = {}
  for record in run_log.read_records(workdir):
    for tag, value in tensorboard_log.scalars(record).items():
      expected.setdefault(tag, []).append((record['epoch'] * steps, value))
  for record in run_log.read_records(workdir, name=run_log.MONITOR):
    for tag, value in tensorboard_log.scalars(record).items():
      expected.setdefault(tag, []).append((record['step'], value))
  found = read_events(workdir)
  assert set(found) == set(expected)
  for tag, points in expected.items():
    points = sorted(points)
    assert [s for s, _ in found[tag]] == [s for s, _ in points], tag  # each step once
    np.testing.assert_allclose([v for _, v in found[tag]], [v for _, v in points], rtol=1e-6,
                               err_msg=tag)


def train(data_dir, tmp_path) -> str:
  """A tiny 2-epoch run: 64 examples / 16 = 4 steps per epoch, the monitor also at steps 2, 6."""
  workdir = str(tmp_path / 'run')
  train_and_evaluate(tiny_config(data_dir, **{'eval.monitor_every_steps': 2}), workdir)
  return workdir


def test_training_logs_every_number_at_its_step(data_dir, tmp_path):
  workdir = train(data_dir, tmp_path)
  found = read_events(workdir)
  assert [s for s, _ in found['train_loss']] == [4, 8]
  assert [s for s, _ in found['pgd_accuracy']] == [2, 4, 6, 8]
  assert {'lr', 'momentum', 'vact/A', 'co_detected'} <= set(found)
  assert_events_match_the_records(workdir, steps=4)


def test_the_end_of_run_report_figures_are_images_at_the_evaluated_step(data_dir, tmp_path):
  config = tiny_config(data_dir, report=True)
  workdir = str(tmp_path / 'run')
  results = train_and_evaluate(config, workdir)
  path = report.write_end_of_run_report(config, workdir)
  events = EventAccumulator(os.path.join(workdir, tensorboard_log.DIR))
  events.Reload()
  figures = sorted(f[:-len('.png')] for f in os.listdir(os.path.dirname(path))
                   if f.endswith('.png'))
  assert 'accuracy' in figures and results['evaluated_step'] == 8
  assert events.Tags()['images'] == [f'report/{name}' for name in figures]
  image = events.Images('report/accuracy')[0]
  assert image.step == 8 and image.width > 100 and image.height > 100
  assert [s for s, _ in read_events(workdir)['train_loss']] == [4, 8]  # nothing purged


@pytest.mark.slow  # two runs (~25 s)
def test_a_resumed_run_logs_every_step_once(data_dir, tmp_path):
  workdir = train(data_dir, tmp_path)
  # Interrupted before epoch 2's checkpoint: epoch 2 is trained and logged again.
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '2'))
  os.remove(os.path.join(workdir, run_log.RESULTS))
  train(data_dir, tmp_path)
  assert len(os.listdir(os.path.join(workdir, tensorboard_log.DIR))) == 2
  assert_events_match_the_records(workdir, steps=4)
