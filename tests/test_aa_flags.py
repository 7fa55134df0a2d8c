"""Per-point flags of each AutoAttack-standard attack, pinned: a change made for speed (the
convolution's gradients, padding, batching, compilation) must leave every point's verdict as
it was recorded, with XLA's convolution and with the one `--mode=eval` runs on
(`model.conv='patch_input_grad'`, strided input gradients summed in another order).

Two tiny networks with strided convolutions (the locuslab MNIST net and the CNN with BatchNorm),
freshly initialised from a fixed seed, 48 uniform random images labelled with the network's
own predictions, and an ε at which each attack breaks some points and not others. Each attack
runs alone (suite 'custom') on all points with short budgets; the fixture
``tests/golden/aa_flags.npz`` holds the per-point robust flags of each (network, attack) and the
suite's. A deliberate change of an attack's numerics re-records it, with the reason in the
commit message:

    PYTHONPATH=$PWD python tests/test_aa_flags.py
"""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import pytest

from fat_jax.data import DATASET_INFOS
from fat_jax.evaluate import evaluate
from fat_jax.methods import init_train_state
from fat_jax.models import build_model

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden', 'aa_flags.npz')
NETWORKS = {'mnist_net': ('fashion_mnist', 0.08), 'cnn': ('cifar10', 0.05)}   # data shape, ε
ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
BUDGET = dict(apgd_steps=10, fab_steps=10, square_queries=100, batch_size=32)


def setting(name: str, conv: str = 'xla'):
  """(apply_fn, params, state, x, y, ε) of network `name` with convolution `conv`."""
  data, eps = NETWORKS[name]
  info = DATASET_INFOS[data]
  model = build_model(ml_collections.ConfigDict(dict(
      name=name, width=8, depth=4, batchnorm=True, dtype='float32', conv=conv)), info)
  ts = init_train_state(model, jax.random.key(0))
  x = np.asarray(jax.random.uniform(jax.random.key(1), (48, *info.image_shape)))
  y = np.asarray(model.apply(ts.params, ts.batch_stats, x, False)[0].argmax(-1))
  return model.apply, ts.params, ts.batch_stats, x, y, eps


def flags(name: str, conv: str = 'xla') -> dict[str, np.ndarray]:
  """Per-point robust flags of each attack alone and of the whole suite on network `name`."""
  apply_fn, params, state, x, y, eps = setting(name, conv)
  run = lambda **kw: evaluate(apply_fn, params, state, x, y, eps=eps, checks=False,
                              progress=False, verbose=False, **BUDGET, **kw)['flags']['robust']
  out = {f'{name}/{a}': np.asarray(run(suite='custom', attacks=(a,))) for a in ATTACKS}
  out[f'{name}/aa_standard'] = np.asarray(run(suite='aa_standard'))
  return out


@pytest.mark.parametrize('name,conv', [
    ('mnist_net', 'patch_input_grad'),
    pytest.param('mnist_net', 'xla', marks=pytest.mark.slow),
    pytest.param('cnn', 'patch_input_grad', marks=pytest.mark.slow),
    pytest.param('cnn', 'xla', marks=pytest.mark.slow)])
def test_per_point_flags_as_recorded(name, conv):
  expected = np.load(FIXTURE)
  for key, value in flags(name, conv).items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)
  # The setting tells something: the suite and its targeted attacks break some points, not all.
  for key in ('apgd-t', 'fab-t', 'aa_standard'):
    assert 0 < expected[f'{name}/{key}'].sum() < len(expected[f'{name}/{key}']), key


if __name__ == '__main__':
  recorded = {}
  for network in NETWORKS:
    recorded.update(flags(network))
  np.savez(FIXTURE, **recorded)
  print({k: f'{int(v.sum())}/{len(v)}' for k, v in recorded.items()})
