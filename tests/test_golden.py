"""Golden states: every method of the method table (and LAP + AAER on N-FGSM, AWP on PGD-AT
and on TRADES) after 3 training steps of a tiny BatchNorm CNN from a fixed seed.

The fixtures under ``tests/golden/`` hold the parameters, the BatchNorm statistics, the
optimiser's momentum buffers and the per-example state after the third step; a change to
how a step is composed must reproduce them within 1e-6 (`TOLERANCE`: looser for the cases whose
steps amplify the last bits in which XLA's CPU kernels differ between processors). They pin
today's numerics, not a paper: a deliberate change of a method's numerics re-records its
fixture, with the reason in the commit message:

    PYTHONPATH=$PWD python tests/test_golden.py [CASE ...]     # default: every case

The step runs with crops and flips (per-example state on the padded canvas), a cyclic
schedule whose first step has lr = 0 and two steps per epoch, so that FGSM-MEP's prior is
reset once (`mep.reset_every` = 1) and ATAS's adaptive step starts at step 2.
"""
from __future__ import annotations

import os
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fat_jax import optim
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS, stored_frame_shape
from fat_jax.methods import init_examples, init_train_state, make_train_step, resolve_method
from fat_jax.models import build_model

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden')
EPS, WD, STEPS, BATCH = 0.1, 5e-4, 3, 8
TACT = np.array([0.1, 0.9, 0.3, 0.5], np.float32)  # T_act of node B (4 channels): C_p = {1, 3}
AAER = dict(aaer=dict(lambda1=1.0, lambda2=1.5, lambda3=0.15))
MEP = dict(mep=dict(reset_every=1))
# atol = rtol per case, else 1e-6. The states were recorded on one x86-64 CPU; on another (an
# AMD EPYC with AVX-512) most cases differ by ≤ 6e-7, these by more, each bound about 4× the
# difference measured there: TRADES's inner maximisation takes the sign of KL gradients from
# a start 0.001·N(0, 1) away from x, where they are near 0, so a flipped sign moves a pixel by
# a whole step (6.4e-4 in the momentum); GradAlign's double backward and the feature-difference
# losses' gradients through V_act carry the kernels' rounding further (3e-6, 2.2e-5).
TOLERANCE = {'trades': 3e-3, 'trades_awp': 3e-3, 'induce_co': 1e-4, 'fd': 1.5e-5,
             'gradalign': 1.5e-5}
# case → (method name, config fields). Multi-step attacks take 3 steps to keep compiling fast.
CASES = {
    'fgsm': ('fgsm', {}),
    'fgsm_rs': ('fgsm_rs', {}),
    'n_fgsm': ('n_fgsm', {}),
    'gradalign': ('gradalign', {}),
    'lap': ('lap', dict(lap=dict(beta=0.5))),
    'aaer': ('aaer', AAER),
    'fgsm_mep': ('fgsm_mep', MEP),
    'fd': ('fd', MEP),
    'induce_co': ('induce_co', dict(MEP, co=dict(percent=50.0))),
    'zerograd': ('zerograd', {}),
    'atas': ('atas', dict(atas=dict(warmup_epochs=1))),
    'pgd_at': ('pgd_at', dict(steps=3)),
    'trades': ('trades', dict(steps=3)),
    'mart': ('mart', dict(steps=3)),
    # c_t 0.5/0.5/0.25, step 3 weighted
    'dart': ('dart', dict(steps=3, dart=dict(control_epochs=2.0))),
    'mma': ('mma', dict(steps=3)),
    'n_fgsm_lap_aaer': ('n_fgsm', dict(AAER, lap=dict(beta=0.5))),
    'pgd_at_awp': ('pgd_at', dict(steps=3, awp=dict(gamma=0.01),
                                    robust_overfitting_forwards=True)),
    'trades_awp': ('trades', dict(steps=3, awp=dict(gamma=0.005))),
}


def write_tact(folder: str) -> str:
  path = os.path.join(folder, 'tact.npz')
  np.savez(path, B=TACT)
  return path


def method_of(case: str, tact_file: str):
  name, fields = CASES[case]
  c = default_config().method
  c.name = name
  c.update(fields)
  if name == 'induce_co':
    c.co.tact_file = tact_file
  return resolve_method(c, EPS)


def momentum_buffers(ts):
  """The optimiser's momentum buffers b (torch SGD's ``momentum_buffer``)."""
  return ts.opt_state.trace


def run_case(case: str, tact_file: str) -> dict:
  """The flattened state after `STEPS` steps: {'params/…', 'batch_stats/…', 'momentum/…',
  'examples/…': array}."""
  model = build_model(ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2,
                                                     batchnorm=True)),
                      DATASET_INFOS['fashion_mnist'])
  method = method_of(case, tact_file)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (BATCH, 28, 28, 1)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, BATCH), jnp.int32)
  schedule = optim.Schedule('cyclic', lr_max=0.2, total_steps=6, steps_per_epoch=2)
  examples = init_examples(method, BATCH, stored_frame_shape((28, 28, 1), 'crop_flip'))
  ts = init_train_state(model, jax.random.key(0), examples)
  step = jax.jit(make_train_step(model, method, schedule, weight_decay=WD,
                                 augment_mode='crop_flip', key=jax.random.key(1)))
  for _ in range(STEPS):
    ts, _ = step(ts, images, labels, jnp.arange(BATCH))
  trees = {'params': ts.params, 'batch_stats': ts.batch_stats,
           'momentum': momentum_buffers(ts), 'examples': ts.examples}
  flat = {}
  for group, tree in trees.items():
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      flat[f"{group}/{jax.tree_util.keystr(path, simple=True, separator='/')}"] = np.asarray(leaf)
  return flat


def golden_path(case: str) -> str:
  return os.path.join(GOLDEN_DIR, f'{case}.npz')


@pytest.mark.parametrize('case', sorted(CASES))
def test_three_steps_reproduce_the_golden_state(case, tmp_path):
  with np.load(golden_path(case)) as f:
    expected = dict(f)
  actual = run_case(case, write_tact(str(tmp_path)))
  assert sorted(actual) == sorted(expected)
  tol = TOLERANCE.get(case, 1e-6)
  chex.assert_trees_all_close(actual, expected, atol=tol, rtol=tol)


def record(cases) -> None:
  import tempfile  # pylint: disable=import-outside-toplevel
  os.makedirs(GOLDEN_DIR, exist_ok=True)
  with tempfile.TemporaryDirectory() as folder:
    tact_file = write_tact(folder)
    for case in cases:
      np.savez_compressed(golden_path(case), **run_case(case, tact_file))
      print(golden_path(case))


if __name__ == '__main__':
  record(sys.argv[1:] or sorted(CASES))
