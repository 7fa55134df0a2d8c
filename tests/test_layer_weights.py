"""The per-layer weight measures of `fat_jax.analysis.landscape` (relative change between
checkpoints, spectral norm, Frobenius norm) on hand-made kernels with known values; their
figure, table and JSON round trip, and the ``--weights`` command line on a saved result."""
import numpy as np
import pytest

from fat_jax.analysis import landscape as ls

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
CHANGE, SPECTRAL, NORM = (ls.WEIGHT_MEASURES.index(m)
                          for m in ('relative_change', 'spectral_norm', 'norm'))


def conv_kernel(values) -> np.ndarray:
  """A 3×3 conv kernel (3, 3, c_in=1, c_out ≤ 9) whose filter j is values[j] at tap j and 0
  elsewhere: as a (9, c_out) matrix its columns are orthogonal, σ_max = max |values|."""
  kernel = np.zeros((3, 3, 1, len(values)))
  for j, v in enumerate(values):
    kernel[j // 3, j % 3, 0, j] = v
  return kernel


def test_measures_of_known_kernels():
  # Layer 1: filters 3 and 4 on different taps, σ_max = 4, ‖W‖_F = 5. Layer 2: the linear
  # kernel [[3, 0], [4, 0]], rank 1, σ_max = ‖W‖_F = 5.
  first = [conv_kernel([3.0, 4.0]), np.array([[3.0, 0.0], [4.0, 0.0]])]
  # Epoch 2: layer 1 doubled (change ‖W‖/‖W‖ = 1), layer 2 unchanged (0).
  second = [conv_kernel([6.0, 8.0]), first[1]]
  values = ls.weight_measures([first, second])
  assert values.shape == (len(ls.WEIGHT_MEASURES), 2, 3)
  np.testing.assert_allclose(values[NORM], [[5, 5, np.sqrt(50)], [10, 5, np.sqrt(125)]])
  np.testing.assert_allclose(values[SPECTRAL, :, :2], [[4, 5], [8, 5]])
  assert np.isnan(values[SPECTRAL, :, 2]).all()  # no spectral norm of all kernels together
  assert np.isnan(values[CHANGE, 0]).all()       # nothing before the first checkpoint
  # all kernels: ‖ΔW‖ = 5 over ‖W(1)‖ = √50
  np.testing.assert_allclose(values[CHANGE, 1], [1.0, 0.0, 5 / np.sqrt(50)])


def test_spectral_norm_is_the_largest_singular_value_of_the_filter_matrix():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 4, 5))
  values = ls.weight_measures([[kernel]])
  matrix = kernel.reshape(36, 5)
  assert ls.kernel_matrix(kernel).shape == (36, 5)
  np.testing.assert_allclose(values[SPECTRAL, 0, 0], np.linalg.svd(matrix)[1][0])
  assert values[SPECTRAL, 0, 0] < values[NORM, 0, 0]  # rank > 1: σ_max < ‖W‖_F


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match='same kernel shapes'):
    ls.weight_measures([[np.ones((2, 3))], [np.ones((3, 3))]])
  with pytest.raises(ValueError, match='≥ 1 checkpoint'):
    ls.weight_measures([])
  with pytest.raises(ValueError, match='≥ 2 axes'):
    ls.kernel_matrix(np.ones(3))


def synthetic() -> ls.LayerWeights:
  """Epochs 2, 3, 4 of three kernels (the last the 'classifier'): layer l is l·W₀ at epoch 2 and
  grows by the factor 1 + l/10 per epoch (relative change l/10)."""
  base = [conv_kernel([1.0, 0.0]), conv_kernel([0.0, 2.0]), np.array([[1.0], [0.0]])]
  kernels = [[(l + 1) * w * (1 + (l + 1) / 10) ** t for l, w in enumerate(base)]
             for t in range(3)]
  return ls.LayerWeights(ls.weight_measures(kernels), [2, 3, 4],
                         ['conv1', 'layer1/conv1', 'linear', ls.ALL_LAYERS], [1, 2, 3, 0],
                         list(ls.WEIGHT_MEASURES), {'workdir': 'w', 'method': 'FGSM',
                                                    'eps': 8 / 255})


def test_table_figure_json_and_cli(tmp_path, capsys):
  weights = synthetic()
  np.testing.assert_allclose(weights.values[CHANGE, 1:, :3], [[0.1, 0.2, 0.3]] * 2)
  table = ls.layer_weights_table(weights, ['relative_change']).splitlines()
  assert table[:2] == ['relative_change: layer \\ epoch',
                       'l    ' + ' '.join(f'{e:>8}' for e in (2, 3, 4))]
  assert table[3].split() == ['2', '–', '0.2', '0.2']
  assert table[-1].split()[0] == 'all'
  with pytest.raises(ValueError, match="No measure 'sharpness'"):
    ls.layer_weights_table(weights, ['sharpness'])
  path = weights.save(str(tmp_path / 'saved'))
  loaded = ls.LayerWeights.load(path)
  np.testing.assert_array_equal(loaded.values, weights.values)  # NaN survives as null
  assert loaded.layers == weights.layers and loaded.epochs == weights.epochs
  with open(ls.plot_layer_weights(weights, str(tmp_path / 'w.png'), former=1), 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  ls.main(['--load', path, '--weights', f'--out={tmp_path}/re'])
  out = capsys.readouterr().out
  assert 'spectral_norm: layer \\ epoch' in out and 'norm: layer \\ epoch' in out
  with open(tmp_path / 're' / 'layer_weights.png', 'rb') as f:
    assert f.read(8) == PNG_MAGIC
