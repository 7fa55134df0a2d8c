"""The end-of-run report and the layer-wise landscape for every method of the method table, on a
tiny real run each (tiny CNN, one epoch of 2 steps): no exception and no warning.

The default suite runs one method per kind of training attack that the landscape once had to
rebuild by itself (FGSM-MEP's prior, ATAS's previous perturbation, TRADES' KL attack) and
induce_co; ``-m slow`` runs the rest.
"""
import logging
import os
import warnings

import numpy as np
import pytest

from fat_jax.analysis import landscape

from fat_jax.methods import METHOD_DEFAULTS
from fat_jax.reports import report
from fat_jax.run.runs import Run
from fat_jax.run.train import train_and_evaluate
from tests.fixtures import write_idx_dir
from tests.test_train import tiny_config

DEFAULT = ('fgsm_mep', 'atas', 'trades', 'induce_co')
FIELDS = {'lap': {'method.lap.beta': 0.01},
          'aaer': {'method.aaer.lambda1': 1.0, 'method.aaer.lambda2': 1.5,
                   'method.aaer.lambda3': 0.15},
          'atas': {'method.atas.warmup_epochs': 0},
          'pgd_at': {'method.steps': 2}, 'trades': {'method.steps': 2},
          'mart': {'method.steps': 2}, 'dart': {'method.steps': 2},
          'mma': {'method.steps': 2}}


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  folder = tmp_path_factory.mktemp('every_method')
  write_idx_dir(str(folder / 'fmnist'), n_train=32, n_test=8)
  np.savez(str(folder / 'tact.npz'), B=np.array([0.1, 0.9, 0.3, 0.5], np.float32))
  return folder


def tiny_run(root, name: str) -> str:
  fields = dict(FIELDS.get(name, {}))
  if name == 'induce_co':
    fields['method.co.tact_file'] = str(root / 'tact.npz')
  config = tiny_config(str(root / 'fmnist'), method=name, num_epochs=1, **fields)
  config.eval.n = config.eval.monitor_n = config.eval.batch_size = 8
  config.eval.pgd_steps = config.eval.monitor_pgd_steps = 1
  workdir = str(root / name)
  train_and_evaluate(config, workdir)
  return workdir


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow) for n in METHOD_DEFAULTS])
def test_report_and_landscape_of_every_method(root, name, caplog):
  workdir = tiny_run(root, name)
  caplog.clear()
  with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
    warnings.simplefilter('error')
    computed = landscape.compute_landscape(workdir, epochs=[1], layers=[1], points=3, n=8,
                                           radius=0.5)
    landscape.plot_landscape(computed, os.path.join(workdir, 'landscape_1d.png'))
    with open(report.write_report([workdir]), encoding='utf-8') as f:
      markdown = f.read()
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
  assert np.isfinite(computed.losses).all()
  assert computed.meta['train_attack']['kind'] == type(Run.open(workdir).method.attack).__name__
  assert '## Adversarial examples' in markdown and 'landscape_1d.png' in markdown
