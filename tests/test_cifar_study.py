"""The pieces of the CIFAR-10 study: the ε sweep over seeds (`aggregate.sweep_points`, the
table, JSON and figure, the CLIs) on synthetic run directories written with the run's own
writers, LAP's shortcut removal (`shortcut_removal.remove_weights`) on a tiny model, its
evaluator end to end on a tiny trained run, and the `configs/cifar_subset.py` recipes."""
import functools
import json
import operator
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar_subset
from fat_jax.analysis.evaluators import EVALUATORS
from fat_jax.analysis.shortcut_removal import layer_paths, removal_masks, remove_weights
from fat_jax.data import DatasetInfo, load_dataset
from fat_jax.methods import init_train_state
from fat_jax.models import build_model
from fat_jax.reports import aggregate, report
from fat_jax.run import run_log
from fat_jax.run.checkpoint import Checkpointer
from fat_jax.run.runs import Run, load_runs, method_label
from tests.fixtures import write_idx_dir
from tests.test_train import tiny_config

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


# ---------------------------------------------------------------------------
# The ε sweep on synthetic runs.

def write_run(workdir: str, method: str, eps_255: int, seed: int, accuracies=None,
              co_epoch=None, eval_eps=None, monitor=((0.2, 0.1), (0.2, 0.1))) -> str:
  """A run directory as training leaves it: config.json, one monitor record per (FGSM, PGD)
  accuracy pair of `monitor` and (when `accuracies` = (clean, fgsm, pgd) is given)
  results.json."""
  config = cifar_subset.get_config(f'{method}_eps{eps_255}')
  config.seed, config.eval.eps = seed, eval_eps
  os.makedirs(workdir)
  run_log.write_json(workdir, run_log.CONFIG, json.loads(config.to_json_best_effort()))
  for epoch, (fgsm, pgd) in enumerate(monitor, 1):
    run_log.append_record(workdir, {'epoch': epoch, 'clean_accuracy': 0.3, 'fgsm_accuracy': fgsm,
                                    'pgd_accuracy': pgd, 'co_detected': False})
  if accuracies is not None:
    clean, fgsm, pgd = accuracies
    run_log.write_json(workdir, run_log.RESULTS, {
        'clean_accuracy': clean, 'fgsm_accuracy': fgsm, 'pgd_accuracy': pgd,
        'co_onset_epoch': co_epoch, 'seed': seed, 'train_eps': eps_255 / 255})
  return workdir


@pytest.fixture
def sweep_root(tmp_path):
  root = str(tmp_path / 'sweep_runs')
  fgsm8 = [((0.60, 0.55, 0.02), 3), ((0.50, 0.45, 0.10), None), ((0.58, 0.52, 0.00), 4)]
  for seed, (acc, co) in enumerate(fgsm8):
    write_run(f'{root}/fgsm_eps8_s{seed}', 'fgsm', 8, seed, acc, co)
  write_run(f'{root}/fgsm_eps16_s0', 'fgsm', 16, 0, (0.40, 0.38, 0.01), 2)
  for seed, pgd in ((0, 0.30), (1, 0.34)):
    write_run(f'{root}/n_fgsm_eps8_s{seed}', 'n_fgsm', 8, seed, (0.55, 0.40, pgd))
  write_run(f'{root}/n_fgsm_eps8_s2', 'n_fgsm', 8, 2)  # still training: no results.json
  return root


def test_sweep_points_mean_std_seeds_and_co_rate(sweep_root):
  points = aggregate.sweep_points(load_runs([sweep_root]))
  assert [(p['method'], round(p['eps'] * 255)) for p in points] == [
      ('fgsm', 8), ('fgsm', 16), ('n_fgsm', 8)]
  fgsm8, fgsm16, nfgsm8 = points
  assert fgsm8['seeds'] == [0, 1, 2] and fgsm8['n_runs'] == 3
  assert fgsm8['pgd_mean'] == pytest.approx((0.02 + 0.10 + 0.00) / 3)
  assert fgsm8['pgd_std'] == pytest.approx(statistics.stdev([0.02, 0.10, 0.00]))  # ddof = 1
  assert fgsm8['clean_std'] == pytest.approx(statistics.stdev([0.60, 0.50, 0.58]))
  assert fgsm8['co_runs'] == 2 and fgsm8['co_rate'] == pytest.approx(2 / 3)
  assert fgsm16['n_runs'] == 1 and fgsm16['pgd_std'] is None and fgsm16['co_rate'] == 1.0
  assert nfgsm8['seeds'] == [0, 1]  # the unfinished seed 2 is left out
  assert nfgsm8['pgd_mean'] == pytest.approx(0.32) and nfgsm8['co_rate'] == 0.0
  assert nfgsm8['pgd_std'] == pytest.approx(np.std([0.30, 0.34], ddof=1))
  table = aggregate.sweep_table(points).splitlines()
  assert table[0] == '| method | ε | seeds | clean | FGSM | PGD | CO rate |'
  assert table[2] == (f"| fgsm | 8/255 | 0,1,2 | 0.560 ± {statistics.stdev([0.6, 0.5, 0.58]):.3f}"
                      f" | 0.507 ± {statistics.stdev([0.55, 0.45, 0.52]):.3f} | 0.040 ± "
                      f"{statistics.stdev([0.02, 0.1, 0.0]):.3f} | 2/3 |")
  assert table[3] == '| fgsm | 16/255 | 0 | 0.400 | 0.380 | 0.010 | 1/1 |'


def test_sweep_co_rate_under_another_threshold(tmp_path, capsys):
  # A collapse at a low level: PGD 0.09 -> 0.01 while FGSM rises to 0.15. The recipe's monitor
  # (a drop of 0.1 below the best) cannot flag it; a drop of 0.05 with a gap of 0.1 does.
  root = str(tmp_path / 'low')
  write_run(f'{root}/fgsm_eps12_s0', 'fgsm', 12, 0, (0.34, 0.14, 0.003),
            monitor=((0.07, 0.08), (0.12, 0.09), (0.15, 0.01)))
  write_run(f'{root}/fgsm_eps12_s1', 'fgsm', 12, 1, (0.40, 0.30, 0.28),
            monitor=((0.20, 0.18), (0.25, 0.22), (0.26, 0.24)))
  runs = load_runs([root])
  assert aggregate.sweep_points(runs)[0]['co_runs'] == 0
  rule = {'drop': 0.05, 'gap': 0.1}
  assert aggregate.sweep_points(runs, rule)[0]['co_runs'] == 1
  out = str(tmp_path / 'out')
  aggregate.main([root, '--sweep', f'--out={out}', '--co-drop=0.05', '--co-gap=0.1'])
  assert '| 1/2 |' in capsys.readouterr().out
  with open(os.path.join(out, aggregate.SWEEP_JSON)) as f:
    assert json.load(f)['co_rule'] == rule
  with pytest.raises(SystemExit):
    aggregate.main([root, '--sweep', '--co-drop=0.05'])
  report.main([root, '--sweep', f'--out={out}', '--co-drop=0.05', '--co-gap=0.1'])  # passed on
  assert '| 1/2 |' in capsys.readouterr().out


def test_sweep_counts_co_from_the_start(tmp_path):
  # Never robust (PGD ≤ 0.04) while FGSM ends 0.25 above PGD: in CO from the first epoch, under
  # the run's own rule and under a drop of 0.05 alike, which no onset shows.
  root = str(tmp_path / 'from_start')
  write_run(f'{root}/fgsm_eps16_s0', 'fgsm', 16, 0, (0.27, 0.14, 0.0),
            monitor=((0.10, 0.04), (0.20, 0.02), (0.25, 0.00)))
  runs = load_runs([root])
  assert aggregate.sweep_points(runs)[0]['co_runs'] == 1
  assert aggregate.sweep_points(runs, {'drop': 0.05, 'gap': 0.1})[0]['co_runs'] == 1
  assert aggregate.sweep_points(runs, {'drop': 0.05, 'gap': 0.3})[0]['co_runs'] == 0
  with pytest.raises(SystemExit):  # the report itself knows no such option
    report.main([root, '--co-drop=0.05'])


def test_sweep_files_figure_and_both_clis(sweep_root, tmp_path, capsys):
  out = str(tmp_path / 'out')
  aggregate.main([sweep_root, '--sweep', f'--out={out}', '--metrics=fgsm,pgd'])
  printed = capsys.readouterr().out
  stored = json.load(open(os.path.join(out, aggregate.SWEEP_JSON)))
  assert stored['ddof'] == 1 and stored['table'] in printed
  assert [p['n_runs'] for p in stored['points']] == [3, 1, 2]
  with open(os.path.join(out, aggregate.SWEEP_PNG), 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  report.main([sweep_root, '--sweep'])  # default: the runs' parent folder/sweep
  assert stored['table'] in capsys.readouterr().out
  assert os.path.exists(os.path.join(sweep_root, 'sweep', aggregate.SWEEP_PNG))
  with pytest.raises(ValueError, match='Unknown sweep metrics'):
    aggregate.plot_sweep(stored['points'], str(tmp_path / 'x.png'), ('autoattack',))


def test_sweep_refuses_runs_that_differ_in_more_than_the_seed(tmp_path):
  root = str(tmp_path / 'mixed')
  write_run(f'{root}/a', 'fgsm', 8, 0, (0.5, 0.4, 0.1))
  write_run(f'{root}/b', 'fgsm', 8, 1, (0.5, 0.4, 0.1), eval_eps=16 / 255)
  with pytest.raises(ValueError, match=r'a and b in eval\.eps'):
    aggregate.sweep_points(load_runs([root]))
  with pytest.raises(SystemExit, match='differ in more than the seed'):
    aggregate.main([root, '--sweep'])
  # A log file next to the runs (a shell glob such as *_s*) is refused in one line.
  open(f'{root}/a.log', 'w').close()
  with pytest.raises(SystemExit, match=r'a\.log is not a run directory'):
    aggregate.main([f'{root}/a', f'{root}/a.log'])
  # Where a run ran (its data folder, progress bars) is no difference.
  config = run_log.read_json(f'{root}/b', run_log.CONFIG)
  config['eval']['eps'], config['data']['dir'], config['progress'] = None, '/elsewhere', False
  run_log.write_json(f'{root}/b', run_log.CONFIG, config)
  assert aggregate.sweep_points(load_runs([root]))[0]['seeds'] == [0, 1]
  write_run(str(tmp_path / 'only' / 'c'), 'fgsm', 8, 0)
  with pytest.raises(ValueError, match='No finished runs'):
    aggregate.sweep_points(load_runs([str(tmp_path / 'only')]))


# ---------------------------------------------------------------------------
# Shortcut removal: the masks on a tiny model.

@pytest.fixture(scope='module')
def tiny_params():
  c = tiny_config('unused').model
  model = build_model(c, DatasetInfo('tiny', 10, (8, 8, 1), (0.5,), (0.5,), 'none'))
  params, _ = model.init(jax.random.key(0))
  return model, params


def _at(tree, path):
  return functools.reduce(operator.getitem, path, tree)


def _leaves(tree):
  return dict(jax.tree_util.tree_flatten_with_path(tree)[0])


def test_largest_weights_removed_exactly_and_nothing_else_changes(tiny_params):
  model, params = tiny_params
  order = model.weight_layer_order(params)
  paths = layer_paths(order, (1, -1))
  assert paths == [order[0], order[-1]]
  out = remove_weights(params, paths, 0.25)
  before, after = _leaves(params), _leaves(out)
  assert before.keys() == after.keys()
  for key, w in before.items():
    names = tuple(k.key for k in key)
    w, v = np.asarray(w), np.asarray(after[key])
    if names not in paths:
      np.testing.assert_array_equal(v, w)  # untouched leaves: bit-identical
      continue
    removed = v == 0
    assert removed.sum() == round(0.25 * w.size)  # (no weight is 0 at initialisation)
    assert np.abs(w[removed]).min() >= np.abs(w[~removed]).max()  # the largest |w| go
    np.testing.assert_array_equal(v[~removed], w[~removed])


def test_random_smallest_group_scope_and_fraction_limits(tiny_params):
  model, params = tiny_params
  order = model.weight_layer_order(params)
  kernels = [np.asarray(_at(params, p)) for p in order]
  sizes = [k.size for k in kernels]
  key = jax.random.key(1)
  random = removal_masks(kernels, 0.3, criterion='random', key=key)
  assert [m.sum() for m in random] == [round(0.3 * n) for n in sizes]
  again = removal_masks(kernels, 0.3, criterion='random', key=key)
  assert all((a == b).all() for a, b in zip(random, again))
  largest = removal_masks(kernels, 0.3)
  assert any((a != b).any() for a, b in zip(random, largest))
  smallest = removal_masks(kernels, 0.3, criterion='smallest')
  for k, m in zip(kernels, smallest):
    assert np.abs(k[m]).max() <= np.abs(k[~m]).min()
  pooled = removal_masks(kernels, 0.1, scope='group')
  assert sum(int(m.sum()) for m in pooled) == round(0.1 * sum(sizes))
  threshold = min(np.abs(k[m]).min() for k, m in zip(kernels, pooled) if m.any())
  assert all((np.abs(k[~m]) <= threshold).all() for k, m in zip(kernels, pooled))
  assert all(not m.any() for m in removal_masks(kernels, 0.0))
  zeroed = remove_weights(params, order, 1.0)
  assert all(not np.asarray(_at(zeroed, p)).any() for p in order)
  with pytest.raises(ValueError, match='criterion must be one of'):
    removal_masks(kernels, 0.1, criterion='norm')
  with pytest.raises(ValueError, match=r'in \[0, 1\]'):
    removal_masks(kernels, 1.5)
  with pytest.raises(ValueError, match='needs a key'):
    removal_masks(kernels, 0.1, criterion='random')
  with pytest.raises(ValueError, match='LAP layer order'):
    layer_paths(order, (0,))


# ---------------------------------------------------------------------------
# The evaluator on a tiny trained run.

def test_shortcut_evaluator_end_to_end(tmp_path):
  """On a run directory holding a checkpoint of an initialised tiny CNN (a trained one is
  read the same way; training would only add compilation time)."""
  data_dir = write_idx_dir(str(tmp_path / 'fmnist'), n_train=64, n_test=16)
  config = tiny_config(data_dir, method='fgsm', num_epochs=1)
  workdir = str(tmp_path / 'run')
  model = build_model(config.model, load_dataset(config.data).info)
  with Checkpointer(workdir) as checkpointer:
    checkpointer.save(1, init_train_state(model, jax.random.key(0)))
  run_log.write_json(workdir, run_log.CONFIG, json.loads(config.to_json_best_effort()))
  with config.unlocked():
    s = config.shortcuts
    s.former, s.latter, s.fractions, s.n, s.pgd_steps = (1,), (-1,), (0.0, 0.5, 1.0), 8, 1
  run = Run.open(workdir, config)
  result = EVALUATORS['shortcuts'].run(run)
  stored = json.load(open(os.path.join(workdir, 'shortcuts.json')))
  assert stored['rows'] == result['rows'] and len(stored['rows']) == 2 * 2 * 3
  assert stored['layer_indices'] == {'former': [1], 'latter': [stored['num_layers']]}
  with open(os.path.join(workdir, 'shortcuts.png'), 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  rows = {(r['criterion'], r['group'], r['fraction']): r for r in stored['rows']}
  base = rows['largest', 'former', 0.0]
  assert all(rows[c, g, 0.0]['pgd'] == base['pgd'] for c in ('largest', 'random')
             for g in ('former', 'latter'))
  # No classifier weights left: the logits are the bias, one class for every point.
  model, ts, _ = run.restore()
  _, labels = run.data.test_subset(8)
  classifier = stored['layers']['latter'][0].split('/')[:-1]
  bias_class = int(jnp.argmax(_at(ts.params, classifier + ['bias'])))
  assert rows['largest', 'latter', 1.0]['clean'] == pytest.approx(np.mean(labels == bias_class))
  # No stem weights left: the output no longer depends on the input, so no attack changes it.
  blind = rows['largest', 'former', 1.0]
  assert blind['clean'] == blind['fgsm'] == blind['pgd']
  half = rows['largest', 'latter', 0.5]
  assert half['removed'] == round(0.5 * half['of'])


# ---------------------------------------------------------------------------
# The CIFAR-10 recipes.

@pytest.mark.parametrize('arg', ['fgsm', 'fgsm_rs', 'n_fgsm', 'pgd_at', 'gradalign', 'v_lap',
                                 'r_lap', 'n_lap', 'rs_aaer', 'n_aaer'])
def test_cifar_subset_recipes_name_their_method(arg):
  config = cifar_subset.get_config(f'{arg}_eps16')
  assert method_label(config.method.to_dict()) == arg
  assert config.eps == 16 / 255 and config.data.name == 'cifar10'
  assert cifar_subset.get_config(arg).eps == 8 / 255
  with pytest.raises(ValueError, match='E in'):
    cifar_subset.get_config(f'{arg}_eps10')
