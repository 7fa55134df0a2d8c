"""JAX's persistent compilation cache on CPU (`fat_jax.launch.use_compilation_cache`): a second
process that reads the programs back computes the same bits as the process that compiled them.

Where XLA's CPU loader rejects its own programs (openxla/xla#44565, some x86 CPUs), 'auto'
leaves the cache off (`cpu_loads_programs`) and the round trip is skipped.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fat_jax import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Three golden-state training steps (FGSM-RS, crops and flips) and APGD-T's δ
# on the MNIST net with --mode=eval's convolution, saved to argv[2]; cache events printed.
SCRIPT = r'''
import sys, tempfile, collections
import jax, ml_collections, numpy as np
from jax import monitoring
from fat_jax.launch import use_compilation_cache
use_compilation_cache(sys.argv[1], jax.default_backend())
events = collections.Counter()
monitoring.register_event_listener(lambda e, **_: events.update([e.rsplit('/', 1)[-1]]))
from tests.test_golden import run_case, write_tact
from fat_jax.attacks import apgd_targeted_attack
from fat_jax.data import DATASET_INFOS
from fat_jax.methods import init_train_state
from fat_jax.models import build_model
with tempfile.TemporaryDirectory() as folder:
  out = run_case('fgsm_rs', write_tact(folder))
info = DATASET_INFOS['fashion_mnist']
model = build_model(ml_collections.ConfigDict(dict(name='mnist_net', conv='patch_input_grad')),
                    info)
ts = init_train_state(model, jax.random.key(0))
x = jax.random.uniform(jax.random.key(1), (16, *info.image_shape))
y = model.apply(ts.params, ts.batch_stats, x, False)[0].argmax(-1)
attack = jax.jit(lambda p, s, x, y, k: apgd_targeted_attack(
    model.apply, p, s, x, y, k, eps=0.1, steps=5, n_target_classes=2).delta)
out['apgd_t_delta'] = np.asarray(attack(ts.params, ts.batch_stats, x, y, jax.random.key(2)))
np.savez(sys.argv[2], **out)
print(events['cache_hits'], events['cache_misses'])
'''


def run(cache: str, out: str) -> tuple[int, int]:
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
         'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run([sys.executable, '-c', SCRIPT, cache, out], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  hits, misses = map(int, done.stdout.split()[-2:])
  return hits, misses


@pytest.mark.slow
def test_a_second_process_reads_the_programs_back_and_computes_the_same_bits(tmp_path):
  if jax.default_backend() != 'cpu' or not launch.cpu_loads_programs():
    pytest.skip("XLA's CPU loader rejects its own programs here (openxla/xla#44565)")
  cache = str(tmp_path / 'xla')
  first = run(cache, str(tmp_path / 'first.npz'))
  second = run(cache, str(tmp_path / 'second.npz'))
  assert first[0] == 0 and first[1] > 0        # compiled, written
  assert second == (first[1], 0)               # every program read back, none compiled
  a, b = np.load(tmp_path / 'first.npz'), np.load(tmp_path / 'second.npz')
  assert sorted(a) == sorted(b) and len(a) > 10
  for key in a:
    assert a[key].tobytes() == b[key].tobytes(), key


def test_auto_keeps_cpu_programs_where_they_load_back(tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  expected = str(tmp_path / 'fat_jax' / 'xla') if launch.cpu_loads_programs() else ''
  assert launch.compilation_cache_dir('auto', 'cpu') == expected
