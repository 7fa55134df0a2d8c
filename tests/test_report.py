"""Reports, layer-wise loss landscapes, the results aggregator and the end-of-run summary,
on one tiny real run (N-FGSM + LAP + AAER + GradAlign, 2 epochs, both checkpoints kept)."""
import csv
import functools
import io
import json
import logging
import operator
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from fat_jax.analysis import landscape
from fat_jax.analysis.evaluators import evaluate_run
from fat_jax.data import load_dataset
from fat_jax.losses import cross_entropy
from fat_jax.reports import aggregate, report
from fat_jax.reports.summary import run_summary
from fat_jax.run import run_log
from fat_jax.run.runs import Run, load_runs, method_label
from fat_jax.run.train import train_and_evaluate
from tests.fixtures import write_idx_dir
from tests.test_train import tiny_config

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
SECTIONS = ('Runs', 'Accuracy per epoch', 'Comparison', 'Learning rate and momentum',
            'AAER statistics', 'LAP perturbation norms', 'Feature-activation differences (V_act)',
            'First-order stationarity (FOSC)', 'GradAlign', 'Evaluation', 'Adversarial examples', 'Layer-wise loss landscapes',
            'Per-epoch records')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(config, workdir) of a finished run with the end-of-run report and a suite evaluation."""
  root = tmp_path_factory.mktemp('report')
  data_dir = write_idx_dir(str(root / 'fmnist'), n_train=64, n_test=16)
  config = tiny_config(data_dir, method='lap', report=True, **{
      'method.lap.beta': 0.01, 'method.aaer.lambda1': 1.0, 'method.aaer.lambda2': 1.5,
      'method.aaer.lambda3': 0.15, 'method.gradalign.lam': 0.2})
  workdir = str(root / 'runs' / 'composed')
  train_and_evaluate(config, workdir)
  report.write_end_of_run_report(config, workdir)  # what launch.py does after training
  with config.unlocked():
    config.eval.suite, config.eval.attacks, config.eval.n = 'custom', ('fgsm',), 8
    config.eval.check_pgd_steps = 1
  evaluate_run(Run.open(workdir, config))
  return config, workdir


@pytest.fixture(scope='module')
def landscape_1d(run):
  """The 1-D landscape of layers 1, 3 and all at both checkpoints, 3 points in [−0.5, 0.5]."""
  _, workdir = run
  return landscape.compute_landscape(workdir, epochs=[1, 2], layers=[1, 3], radius=0.5,
                                     points=3, n=8)


def sections(markdown: str) -> list[str]:
  return re.findall(r'^## (.+)$', markdown, re.M)


def assert_images_exist(markdown: str, folder: str) -> list[str]:
  names = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', markdown)
  for name in names:
    with open(os.path.join(folder, name), 'rb') as f:
      assert f.read(8) == PNG_MAGIC, name
  return names


def test_training_writes_the_report_and_the_summary_lists_the_files(run):
  _, workdir = run
  path = os.path.join(workdir, run_log.REPORT)
  markdown = open(path).read()
  single_run = [s for s in SECTIONS if s != 'Comparison']
  assert sections(markdown) == single_run
  names = assert_images_exist(markdown, os.path.dirname(path))
  assert {'accuracy.png', 'schedule.png', 'aaer.png', 'lap_norms.png', 'gradalign.png',
          'vact.png', 'fosc.png', 'adversarial_composed.png'} <= set(names)
  screen = run_summary(workdir)
  for line in (os.path.join(workdir, 'checkpoints', '2'), os.path.join(workdir, 'metrics.jsonl'),
               os.path.join(workdir, 'results.json'), path, 'PGD-2-1'):
    assert line in screen
  assert len(screen.splitlines()) <= 12


def test_report_of_several_runs_renders_every_section(run, landscape_1d, tmp_path):
  config, workdir = run
  # A second run: the same files plus V_act records (fat_jax records them per epoch as
  # {'vact': {node: value}}) and a 1-D landscape of its checkpoints.
  other = str(tmp_path / 'runs' / 'with_vact')
  shutil.copytree(workdir, other, ignore=shutil.ignore_patterns('report'))
  records = run_log.read_records(other)
  os.remove(os.path.join(other, run_log.METRICS))
  for i, record in enumerate(records):
    run_log.append_record(other, {**record, 'vact': {'A': 0.1 * (i + 1), 'B': 0.2 * (i + 1)}})
  landscape.plot_landscape(landscape_1d, os.path.join(other, 'landscape_1d.png'))
  out = str(tmp_path / 'out')
  path = report.write_report([workdir, other], out)
  markdown = open(path).read()
  assert sections(markdown) == list(SECTIONS)
  names = assert_images_exist(markdown, out)
  assert {'comparison.png', 'vact.png', 'with_vact_landscape_1d.png', 'adversarial_with_vact.png',
          'adversarial_composed.png'} <= set(names)
  evaluation = json.load(open(os.path.join(workdir, 'eval_custom.json')))
  assert '`eval_custom.json`' in markdown
  for name, check in evaluation['checks'].items():
    assert f"| {name} | {'**WARN**' if check['status'] == 'warn' else check['status']} |" \
        in markdown
  assert f"| fgsm | {evaluation['robust_accuracy_by_attack']['fgsm']:.4f} |" in markdown


def test_the_report_draws_the_artefacts_it_is_given(run, tmp_path):
  """Rendering reads only: the examples come from the examples evaluator (stored in
  examples.npz) or say why there are none."""
  _, workdir = run
  bare = str(tmp_path / 'bare')  # a run without checkpoints: no examples can be computed
  shutil.copytree(workdir, bare, ignore=shutil.ignore_patterns('report', 'checkpoints',
                                                                'examples.npz'))
  markdown = open(report.write_report([bare], str(tmp_path / 'a'))).read()
  assert re.search(r'bare: not available \(no checkpoints in .*bare\)', markdown)
  assert not os.path.exists(os.path.join(bare, 'examples.npz'))
  runs = load_runs([workdir])
  markdown = open(report.render_report(runs, str(tmp_path / 'b'), {})).read()
  assert f'{runs[0].name}: skipped.' in markdown and 'adversarial_' not in markdown


def test_report_failure_is_logged_and_keeps_the_results(run, tmp_path, caplog):
  _, workdir = run
  broken = str(tmp_path / 'broken')
  shutil.copytree(workdir, broken, ignore=shutil.ignore_patterns('report', 'checkpoints'))
  records = run_log.read_records(broken)
  records[-1]['train_lap_norm'] = [1.0]  # ragged per-layer norms: the LAP figure fails
  with open(os.path.join(broken, run_log.METRICS), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  results = open(os.path.join(broken, run_log.RESULTS)).read()
  with caplog.at_level(logging.WARNING, logger='fat_jax'):
    assert report.try_write_report(broken) is None
  assert 'python -m fat_jax.reports.report' in caplog.text
  assert open(os.path.join(broken, run_log.RESULTS)).read() == results


def test_landscape_at_step_zero_is_the_checkpoint_loss(run, landscape_1d):
  config, workdir = run
  result = landscape_1d
  # epochs × (layer 1, layer 3, all) × kinds × grid; the middle grid point is a = 0.
  assert result.losses.shape == (2, 3, 3, 3) and result.axis[1] == 0.0
  assert result.layers == ['conv0', 'linear', 'all'] and result.layer_indices == [1, 3, 0]
  data = load_dataset(config.data)
  x = jnp.asarray(data.train_images[:8], jnp.float32) / 255.0
  y = jnp.asarray(data.train_labels[:8])
  for e, (epoch, model, ts) in enumerate(
      Run.open(workdir).checkpoints([1, 2])):
    clean = float(cross_entropy(model.apply(ts.params, ts.batch_stats, x, False)[0], y).mean())
    np.testing.assert_allclose(result.losses[e, :, 0, 1], clean, rtol=1e-5)
    for k in (1, 2):  # the attacks' inputs are fixed: every layer set starts at the same loss
      np.testing.assert_allclose(result.losses[e, :, k, 1], result.losses[e, 0, k, 1], rtol=1e-6)
    assert result.losses[e, 0, 2, 1] > clean  # PGD raises the loss
    assert np.all(result.losses[e][..., [0, 2]] != result.losses[e][..., [1]])  # a ≠ 0 moves


def test_landscape_grid_moves_only_the_chosen_layer(run, landscape_1d):
  config, workdir = run
  data = load_dataset(config.data)
  (_, model, ts), = Run.open(workdir).checkpoints([2])
  paths = tuple(model.weight_layer_order(ts.params))
  direction = landscape.filter_normalized_direction(jax.random.key(3), ts.params, paths)
  for path in paths:  # each output filter has the norm of the weights' filter
    w, d = (np.asarray(functools.reduce(operator.getitem, path, tree))
            for tree in (ts.params, direction))
    filter_norm = lambda a: np.sqrt(np.sum(a ** 2, axis=tuple(range(a.ndim - 1))))
    np.testing.assert_allclose(filter_norm(d), filter_norm(w), rtol=1e-5)
  # The linear bias and every BatchNorm parameter stay put.
  assert not np.any(np.asarray(direction['linear']['bias']))
  assert not any(np.any(np.asarray(v)) for v in jax.tree.leaves(direction['bn0']))
  # L(a) along layer 2 (conv1) equals the CE with conv1 moved by a·d by hand.
  x = jnp.asarray(data.test_images[:8], jnp.float32) / 255.0
  y = jnp.asarray(data.test_labels[:8])
  coefficients = jnp.array([[0.0], [0.5], [-0.25]])
  sums = landscape.grid_loss_sums(
      ts.params, ts.batch_stats, jax.tree.map(lambda d: d[None], direction),
      jax.nn.one_hot(1, len(paths)), coefficients, jnp.stack([x, x, x]), y,
      model=model, paths=paths, grid_batch=8)
  for a, row in zip(coefficients[:, 0], np.asarray(sums)):
    kernel = ts.params['conv1']['kernel'] + a * direction['conv1']['kernel']
    moved = {**ts.params, 'conv1': {'kernel': kernel}}
    by_hand = float(cross_entropy(model.apply(moved, ts.batch_stats, x, False)[0], y).sum())
    np.testing.assert_allclose(row, by_hand, rtol=1e-5)


def test_landscape_2d_plot_and_errors(run, tmp_path):
  _, workdir = run
  landscape.main([workdir, '--dims=2', '--points=3', '--n=8', '--epochs=2', '--layers=2',
                  '--grid_batch=9', f'--out={tmp_path}'])
  saved = landscape.Landscape.load(str(tmp_path / 'landscape_2d.npz'))
  assert saved.losses.shape == (1, 2, 3, 3, 3) and saved.meta['dims'] == 2
  with open(tmp_path / 'landscape_2d.png', 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  with pytest.raises(FileNotFoundError, match='checkpoint_keep'):
    landscape.compute_landscape(workdir, epochs=[7])
  with pytest.raises(ValueError, match='loss kinds'):
    landscape.compute_landscape(workdir, kinds=['fgsm'])


def test_aggregate_table_matches_the_runs_json(run, tmp_path, capsys):
  _, workdir = run
  other = str(tmp_path / 'with_aa')
  shutil.copytree(workdir, other, ignore=shutil.ignore_patterns('report', 'checkpoints'))
  shutil.copy(os.path.join(workdir, 'eval_custom.json'),
              os.path.join(other, 'eval_aa_standard.json'))
  runs = load_runs([os.path.dirname(workdir), other])  # a folder of runs, and a run
  assert [r.name for r in runs] == ['composed', 'with_aa']
  results = json.load(open(os.path.join(workdir, 'results.json')))
  aa = json.load(open(os.path.join(other, 'eval_aa_standard.json')))['robust_accuracy']
  pgd = [r['pgd_accuracy'] for r in run_log.read_records(workdir)]
  table = aggregate.markdown_table(runs, ('run', 'method', 'eps', 'seed', 'clean', 'fgsm', 'pgd',
                                          'aa', 'monitor_pgd', 'co_epoch', 'train_time'))
  lines = table.splitlines()
  assert lines[0] == ('| run | method | ε | seed | clean | FGSM | PGD | AA | '
                      'monitor PGD best / last | CO epoch | train time (s) |')
  row = (f"| lap+aaer+gradalign | 0.1 | 0 | {results['clean_accuracy']:.3f} | "
         f"{results['fgsm_accuracy']:.3f} | {results['pgd_accuracy']:.3f} |")
  assert lines[2] == (f'| composed {row} – | {max(pgd):.3f} / {pgd[-1]:.3f} | – | '
                      f"{results['train_time_s']:.0f} |")
  assert lines[3].startswith(f'| with_aa {row} {aa:.3f} |')
  aggregate.main([os.path.dirname(workdir), other, '--format=csv', '--columns=run,pgd,aa'])
  rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
  assert [float(r['pgd']) for r in rows] == [results['pgd_accuracy']] * 2
  assert rows[0]['aa'] == '' and float(rows[1]['aa']) == aa
  with pytest.raises(ValueError, match='Unknown columns'):
    aggregate.markdown_table(runs, ('pgd', 'autoattack'))
  with pytest.raises(FileNotFoundError, match='not a run directory'):
    load_runs([str(tmp_path / 'empty')])


@pytest.mark.parametrize('name', ['fgsm', 'fgsm_rs', 'n_fgsm', 'gradalign', 'v_lap', 'r_lap',
                                  'n_lap', 'rs_aaer', 'n_aaer', 'zerograd', 'atas', 'pgd_at',
                                  'trades', 'mart', 'awp_pgd_at', 'awp_trades'])
def test_method_labels_name_the_quickstart_recipes(name):
  assert method_label(quickstart.get_config(name).method.to_dict()) == name
