"""The pieces of the CIFAR-10 layer and signal studies on synthetic inputs: from
`fat_jax.analysis.landscape` a selection of checkpoints and layers, the distortion D per curve,
its heat map and table, and the CLI that re-plots a saved landscape; the report's CO-signal
figure with the monitor's PGD accuracy on the scale of the run."""
import dataclasses
import json

import numpy as np
import pytest

from fat_jax.analysis import landscape as ls
from fat_jax.config import default_config
from fat_jax.reports import report
from fat_jax.run import run_log
from fat_jax.run.runs import Run

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def synthetic(dims: int = 1, points: int = 5) -> ls.Landscape:
  """Epochs 3, 5, 7; layers 1, 2 and all; kinds train_attack, pgd; L = base + s·a² per curve,
  s = epoch · (layer index + 1) · (kind + 1), so D = s · mean(a²) over the grid."""
  axis = np.linspace(-1, 1, points, dtype=np.float32)
  grid = np.meshgrid(*([axis] * dims), indexing='ij')
  square = sum(g ** 2 for g in grid)
  epochs, indices = [3, 5, 7], [1, 2, 0]
  losses = np.stack([np.stack([np.stack([0.5 + e * (l + 1) * (k + 1) * square for k in range(2)])
                               for l in indices]) for e in epochs])
  meta = {'workdir': 'w', 'method': 'FGSM', 'dims': dims, 'split': 'train', 'n': 4, 'seed': 0,
          'radius': 1.0, 'eps': 8 / 255}
  return ls.Landscape(losses, axis, epochs, ['conv1', 'layer1/conv1', 'all'], indices,
                      ['train_attack', 'pgd'], meta)


@pytest.mark.parametrize('dims', [1, 2])
def test_distortion_is_the_mean_rise_over_the_grid(dims):
  land = synthetic(dims)
  mean_square = np.mean(sum(g ** 2 for g in np.meshgrid(*([land.axis] * dims), indexing='ij')))
  expected = np.array([[[e * (l + 1) * (k + 1) * mean_square for k in range(2)]
                        for l in land.layer_indices] for e in land.epochs])
  np.testing.assert_allclose(ls.distortion(land), expected, rtol=1e-5)
  peak = dataclasses.replace(land, losses=-land.losses)  # a loss that falls away from w
  np.testing.assert_allclose(ls.distortion(peak), expected, rtol=1e-5)
  with pytest.raises(ValueError, match='odd number of points'):
    ls.distortion(synthetic(dims, points=4))


def test_select_keeps_the_chosen_checkpoints_and_layers_in_order():
  land = synthetic()
  part = ls.select(land, epochs=[7, 3], layers=[0, 2])
  assert part.epochs == [7, 3] and part.layer_indices == [0, 2]
  assert part.layers == ['all', 'layer1/conv1']
  np.testing.assert_array_equal(part.losses[0, 1], land.losses[2, 1])
  np.testing.assert_array_equal(ls.select(land).losses, land.losses)
  with pytest.raises(ValueError, match='no epoch 4, layer 9'):
    ls.select(land, epochs=[4], layers=[9])


def test_distortion_figure_table_and_cli_replot(tmp_path, capsys):
  land = synthetic()
  path = ls.plot_distortion(land, str(tmp_path / 'd.png'))
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  table = ls.distortion_table(land).splitlines()
  assert table[0] == 'distortion D (train_attack): layer \\ epoch'
  # layer 1 of the train_attack loss: D = e · 2 · mean(a²) = e
  assert table[2].split() == ['1', *(f'{e:.3g}' for e in (3.0, 5.0, 7.0))]
  npz = land.save(str(tmp_path / 'saved'))
  ls.main(['--load', npz, '--show_epochs=3,7', '--show_layers=1,0', f'--out={tmp_path}/re'])
  out = capsys.readouterr().out
  assert 'distortion D (pgd)' in out
  for name in ('landscape_1d.png', 'landscape_1d_distortion.png'):
    with open(tmp_path / 're' / name, 'rb') as f:
      assert f.read(8) == PNG_MAGIC
  with pytest.raises(SystemExit):
    ls.main([])


def test_signal_figure_puts_the_monitor_pgd_on_the_scale_of_the_run(tmp_path, monkeypatch):
  workdir = tmp_path / 'fgsm'
  workdir.mkdir()
  lines = lambda rows: ''.join(json.dumps(r) + '\n' for r in rows)
  (workdir / run_log.METRICS).write_text(lines(
      {'epoch': e, 'pgd_accuracy': a} for e, a in ((1, 0.2), (2, 0.25), (3, 0.01))))
  (workdir / run_log.SIGNALS).write_text(lines(
      {'epoch': s / 4, 'step': s, 'aae_fraction': s / 100, 'vact': 10 - s / 4,
       'triggered': ['aae_fraction'] if s == 9 else []} for s in range(1, 13)))
  figures = []
  monkeypatch.setattr(report, '_save', lambda fig, out, name: figures.append(fig) or name)
  run = Run(str(workdir), 'fgsm', default_config())
  assert report.plot_signals([run], str(tmp_path)) == 'signals.png'
  panels = [ax for ax in figures[0].axes if ax.get_ylabel() in ('aae_fraction', 'vact')]
  twins = [ax for ax in figures[0].axes if ax.get_ylabel() == 'PGD accuracy (monitor)']
  assert len(panels) == len(twins) == 2
  for twin in twins:
    np.testing.assert_allclose(twin.get_ylim(), (0, 0.3))  # 1.2 × the best PGD accuracy
  monkeypatch.undo()
  report.plot_signals([run], str(tmp_path))
  with open(tmp_path / 'signals.png', 'rb') as f:
    assert f.read(8) == PNG_MAGIC
