"""Data parallelism: 8 (fake CPU) devices give the 1-device result for every method and for the
evaluation, the CPU cores as devices give the 1-device evaluation, and a real 2-process run on
localhost matches a single-process run."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from fat_jax.analysis.evaluators import EVALUATORS
from fat_jax.parallel import cpu_device_count
from tests.fixtures import write_idx_dir
from tests.test_eval_suites import checkpointed_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EIGHT_DEVICES = '''
import tempfile
import jax, jax.numpy as jnp, numpy as np, ml_collections
from fat_jax import optim
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS, shard_batch, stored_frame_shape
from fat_jax.evaluate import PGDSettings, evaluate, evaluate_robustness
from fat_jax.methods import (METHOD_DEFAULTS, init_examples, init_regularizer_state,
                             init_train_state, make_train_step, resolve_method)
from fat_jax.models import build_model
from fat_jax.parallel import make_data_mesh, replicate, to_host

assert jax.device_count() == 8
info = DATASET_INFOS['fashion_mnist']
model = build_model(ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2, batchnorm=True)),
                    info)
# L_co's channels: a T_act file for node B of this model.
channels = model.apply(*model.init(jax.random.key(0)), jnp.zeros((1, 28, 28, 1)), False)[2]['B']
tact_file = tempfile.mkdtemp() + '/tact.npz'
np.savez(tact_file, B=np.linspace(0.0, 1.0, channels.shape[-1]))
# Every method with the fields it needs beyond its defaults (not the published values), and AWP.
CASES = {name: dict(name=name) for name in METHOD_DEFAULTS}
CASES['lap'].update(lap=dict(beta=0.03))
CASES['aaer'].update(aaer=dict(lambda1=1.0, lambda2=2.5, lambda3=1.5))
CASES['induce_co'].update(co=dict(tact_file=tact_file, percent=50.0))
# ELLE's published λ (1000) scales the rounding of its error past the tolerance.
CASES['elle'].update(elle=dict(lam=10.0))
CASES['elle_a'].update(elle=dict(lam=10.0))
CASES['awp_trades'] = dict(name='trades', awp=dict(gamma=0.005))
# TRADES' official start x + 0.001·N(0, I) makes the first KL gradients rounding noise, whose
# signs change with the order of the reductions; a uniform start runs the same computation on
# gradients that mean something.
for name in ('trades', 'awp_trades'):
  CASES[name].update(init='uniform', init_scale=1.0)
n, eps = 32, 0.1
images = np.asarray(jax.random.randint(jax.random.key(1), (n, 28, 28, 1), 0, 256), np.uint8)
labels = np.asarray(jax.random.randint(jax.random.key(2), (n,), 0, 10))
schedule = optim.Schedule('cyclic', lr_max=0.2, total_steps=40, steps_per_epoch=2)
meshes = {1: make_data_mesh(jax.devices()[:1]), 8: make_data_mesh()}

def run(name, devices, steps):
  c = default_config().method
  c.update(CASES[name])
  method = resolve_method(c, eps)
  mesh = meshes[devices]
  examples = init_examples(method, n, stored_frame_shape(info.image_shape, 'crop'))
  ts = replicate(init_train_state(model, jax.random.key(0), examples,
                                  regularizer_state=init_regularizer_state(method)), mesh)
  ts = ts._replace(step=replicate(jnp.asarray(1, jnp.int32), mesh))  # lr > 0
  step = jax.jit(make_train_step(model, method, schedule, weight_decay=5e-4, augment_mode='crop',
                                 key=jax.random.key(3)))
  out = []
  for s in range(steps):
    batch = np.arange(16) + 16 * (s % 2)
    ts, metrics = step(ts, *shard_batch((images[batch], labels[batch], batch), mesh))
    out.append(jax.tree.map(to_host, (ts, metrics)))
  return out

for name in sorted(CASES):
  one, eight = run(name, 1, 3), run(name, 8, 3)
  # TRADES's inner maximisation takes signs of KL gradients near 0 (tests/test_golden.py's
  # TOLERANCE): the reduction order of 8 shards flips some (1.2e-4, 0.9% on an AMD EPYC).
  tol = dict(rtol=3e-2, atol=5e-4) if 'trades' in name else dict(rtol=2e-4, atol=2e-5)
  for s, (a, b) in enumerate(zip(one, eight)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, **tol, err_msg=f'{name} step {s + 1}')
  print('same', name, flush=True)

ts = init_train_state(model, jax.random.key(0))
settings = PGDSettings(eps=eps, steps=5, restarts=2)
flags = {d: evaluate_robustness(model, ts.params, ts.batch_stats, images, labels, settings,
                                mesh=meshes[d], batch_size=16, progress=False)['flags']
         for d in (1, 8)}
for k in flags[1]:
  np.testing.assert_array_equal(flags[1][k], flags[8][k], err_msg=k)
x = images.astype(np.float32) / 255
reports = {d: evaluate(model.apply, ts.params, ts.batch_stats, x, labels, suite='aa_standard',
                       eps=eps, batch_size=16, progress=False, apgd_steps=5, fab_steps=5,
                       square_queries=20, n_target_classes=2, check_pgd_steps=2,
                       mesh=meshes[d]) for d in (1, 8)}
for k in ('clean', 'robust'):
  np.testing.assert_array_equal(reports[1]['flags'][k], reports[8]['flags'][k], err_msg=k)
np.testing.assert_allclose(reports[1]['x_adv'], reports[8]['x_adv'], atol=1e-5)
assert reports[1]['robust_accuracy_by_attack'] == reports[8]['robust_accuracy_by_attack']
print('same evaluation', flush=True)

# A global batch that does not split over the devices is refused with the fix.
from fat_jax.run.train import train_and_evaluate
config = default_config()
config.batch_size = 12
for call in (lambda: train_and_evaluate(config, tempfile.mkdtemp()),
             lambda: evaluate(model.apply, ts.params, ts.batch_stats, x, labels, suite='pgd',
                              eps=eps, batch_size=12, mesh=meshes[8])):
  try:
    call()
    raise AssertionError('no error for a batch of 12 on 8 devices')
  except ValueError as e:
    assert 'multiple of the device count' in str(e), e
print('batch checks', flush=True)
'''


@pytest.mark.slow
def test_eight_devices_give_the_one_device_result_for_every_method():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-c', EIGHT_DEVICES], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stdout + done.stderr[-4000:]
  assert 'same fgsm_mep' in done.stdout and 'batch checks' in done.stdout


CONFIG = '''
from fat_jax.config import default_config


def get_config():
  c = default_config()
  c.data.name, c.data.dir = 'fashion_mnist', {data_dir!r}
  c.model.name, c.model.width, c.model.depth, c.model.batchnorm = 'cnn', 4, 2, True
  c.method.name, c.eps, c.batch_size, c.num_epochs, c.progress = 'fgsm_rs', 0.1, 16, 2, False
  c.eval.n, c.eval.monitor_n, c.eval.batch_size = 16, 16, 16
  c.eval.pgd_steps, c.eval.pgd_restarts, c.eval.monitor_pgd_steps = 2, 1, 1
  return c
'''


def test_cpu_devices_setting():
  assert cpu_device_count('auto', True, 256, cores=2) == 2
  assert cpu_device_count('auto', True, 250, cores=4) == 2   # the largest count dividing the batch
  assert cpu_device_count('auto', True, 7, cores=2) == 1
  assert cpu_device_count('auto', False, 256, cores=2) == 1  # training keeps one device
  assert cpu_device_count('3', False, 256, cores=2) == 3
  for bad in ('0', 'two', '-1'):
    with pytest.raises(ValueError, match="cpu_devices must be 'auto' or a positive integer"):
      cpu_device_count(bad, True, 256)


@pytest.mark.parametrize('xla_flags, expected', [
    ('', '2 --xla_cpu_multi_thread_eigen=false'),
    ('--xla_force_host_platform_device_count=3', '3 --xla_force_host_platform_device_count=3'),
])
def test_split_cpu_cores_leaves_a_device_count_the_user_set(xla_flags, expected):
  script = ('import jax, os\nfrom fat_jax.parallel import split_cpu_cores\nsplit_cpu_cores(2)\n'
            'print(jax.device_count(), os.environ["XLA_FLAGS"])')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_NUM_CPU_DEVICES'}
  env['XLA_FLAGS'] = xla_flags
  done = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == expected


def test_evaluators_on_the_cpu_cores_as_devices_give_the_one_device_result(tmp_path):
  """`launch.py --mode=eval|robustness --config.cpu_devices=2`: two single-threaded CPU devices
  evaluate what one device (this process) does, flag for flag."""
  config_file, run = checkpointed_run(tmp_path, CONFIG, n_test=16)
  workdir = run.workdir
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_NUM_CPU_DEVICES')}
  for mode in ('eval', 'robustness'):
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'),
                           f'--config={config_file}', f'--workdir={workdir}', f'--mode={mode}',
                           '--config.cpu_devices=2', '--config.compilation_cache='],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
  for stem, mode, fields, kinds in (
      ('eval_pgd', 'eval', ('clean_accuracy', 'robust_accuracy', 'robust_accuracy_by_attack'),
       ('clean', 'robust')),
      ('robustness_epoch1', 'robustness', ('clean_accuracy', 'fgsm_accuracy', 'pgd_accuracy'),
       ('clean', 'fgsm', 'pgd'))):
    split = json.load(open(os.path.join(workdir, f'{stem}.json')))
    split_flags = dict(np.load(os.path.join(workdir, f'{stem}_flags.npz')))
    if mode == 'eval':
      assert split['devices'] == '2 × cpu'   # the evaluation report names its devices
    one = EVALUATORS[mode].run(run)
    one_flags = one.get('flags') or np.load(os.path.join(workdir, f'{stem}_flags.npz'))
    for field in fields:
      assert split[field] == one[field], (mode, field)
    for kind in kinds:
      np.testing.assert_array_equal(split_flags[kind], one_flags[kind])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def final_params(workdir):
  script = textwrap.dedent(f'''
      import jax, numpy as np
      from fat_jax.data import DATASET_INFOS
      from fat_jax.methods import init_train_state
      from fat_jax.models import build_model
      from fat_jax.run.checkpoint import Checkpointer
      import ml_collections
      model = build_model(ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2,
                                                         batchnorm=True)),
                          DATASET_INFOS['fashion_mnist'])
      c = Checkpointer({workdir!r})
      ts = c.restore(c.latest_epoch(), init_train_state(model, jax.random.key(0)))
      np.savez({workdir!r} + '/final.npz', *[np.asarray(x) for x in jax.tree.leaves(ts)])
  ''')
  subprocess.run([sys.executable, '-c', script], cwd=ROOT, check=True, capture_output=True,
                 timeout=120)
  stored = np.load(os.path.join(workdir, 'final.npz'))
  return [stored[k] for k in sorted(stored.files, key=lambda k: int(k.split('_')[1]))]


@pytest.mark.slow
def test_two_processes_train_together_like_one(tmp_path):
  """A real multi-host run: 2 processes (one CPU device each) on localhost, JAX's CPU
  collectives; the global batch is split between them. Same result as one process."""
  data_dir = write_idx_dir(str(tmp_path / 'fmnist'), n_train=64, n_test=16)
  config = tmp_path / 'tiny.py'
  config.write_text(CONFIG.format(data_dir=data_dir))
  launch = [sys.executable, os.path.join(ROOT, 'launch.py'), f'--config={config}']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  single = subprocess.run(launch + [f'--workdir={tmp_path / "single"}'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  port, workdir = free_port(), tmp_path / 'multi'
  procs = [subprocess.Popen(launch + [f'--workdir={workdir}',
                                      f'--config.distributed.coordinator_address=localhost:{port}',
                                      '--config.distributed.num_processes=2',
                                      f'--config.distributed.process_id={i}'],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in (0, 1)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert 'Final (epoch 2' in outputs[0][1] and 'Final' not in outputs[1][1]  # process 0 reports
  a = json.load(open(tmp_path / 'single' / 'results.json'))
  b = json.load(open(workdir / 'results.json'))
  assert b['n'] == a['n'] == 16
  for x, y in zip(final_params(str(tmp_path / 'single')), final_params(str(workdir))):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
  assert len(open(workdir / 'metrics.jsonl').readlines()) == 2  # written once, by process 0
