"""Where a jitted training step's time goes on the device, by kind of operation.

  python benchmarks/step_profile.py --width=16                  # FGSM-RS, PreActResNet-18
  python benchmarks/step_profile.py --width=64 --torch          # + PyTorch's profile of its step
  python benchmarks/step_profile.py --fusions                   # + BN/ReLU/add by fusion kind

Runs `benchmarks/step_time.py`'s step (same model, batch, augmentation and optimiser) a few
times under `jax.profiler.trace`, reads the trace back (`jax.profiler.ProfileData`) and sums
each XLA operation's time per step, grouped by what the compiled HLO says it is:
convolution forward, input gradient, weight gradient (the backward convolution whose window
is the whole feature map), layout transposes, the network's other fused operations
(BatchNorm, ReLU, additions, and their gradients) and everything else (augmentation, attack
arithmetic, loss, optimiser). Times are summed over the CPU's threads, so their total can
exceed the step's wall time; it also counts the step's convolutions of each kind. `--torch` prints `torch.profiler`'s self time per aten operator
for the PyTorch FGSM-RS step of step_time.py (the operator's time on the calling thread, with
its intra-op threads working inside it: compare shares, not totals).
"""
from __future__ import annotations

import argparse
import collections
import glob
import re
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from step_time import EPS, method_config, torch_steps  # pylint: disable=wrong-import-order
from fat_jax import optim
from fat_jax.data import DATASET_INFOS, shard_batch, stored_frame_shape
from fat_jax.methods import init_examples, init_train_state, make_train_step, resolve_method
from fat_jax.models import build_model
from fat_jax.parallel import make_data_mesh, replicate

_CONV_WINDOW = re.compile(r'convolution\(.*window=\{size=(\d+)x(\d+)')


def hlo_categories(hlo: str) -> dict[str, str]:
  """Top-level HLO instruction name → category, from the compiled module's text."""
  computations, current = {}, None
  for line in hlo.splitlines():
    head = re.match(r'(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{$', line)
    if head:
      current = computations.setdefault(head.group(1), [])
    elif current is not None:
      current.append(line)
  fused = set(re.findall(r'kind=\w+, calls=%?([\w.\-]+)', hlo))  # run inside their fusion
  categories, current = {}, None
  for line in hlo.splitlines():
    head = re.match(r'(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{$', line)
    if head:
      current = head.group(1)
    if current in fused:
      continue
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w\-]*)\(', line)
    if not m:
      continue
    name, op = m.groups()
    callee = re.search(r'calls=%?([\w.\-]+)', line)
    body = '\n'.join([line] + computations.get(callee.group(1), []) if callee else [line])
    meta = ' '.join(re.findall(r'op_name="([^"]*)"', body))
    window = _CONV_WINDOW.search(body)
    if window:
      if max(map(int, window.groups())) > 3:
        categories[name] = 'conv weight gradient'
      elif 'transpose(' in meta:
        categories[name] = 'conv input gradient'
      else:
        categories[name] = 'conv forward'
    elif 'transpose' in name and not meta:
      categories[name] = 'layout transposes'
    elif 'PreActResNet18' in meta or 'ResNet18' in meta:
      categories[name] = ('network other, backward (BN, ReLU, add)' if 'transpose(' in meta
                          else 'network other, forward (BN, ReLU, add)')
    elif op not in ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast'):
      categories[name] = 'rest (augmentation, attack, loss, optimiser)'
  return categories


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--width', type=int, default=16)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--method', default='fgsm_rs')
  parser.add_argument('--conv', default='xla', help='model.conv: xla or im2col_grad')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--torch', action='store_true')
  parser.add_argument('--fusions', action='store_true',
                      help="also split the network's other operations by XLA fusion kind")
  args = parser.parse_args()

  info, batch = DATASET_INFOS['cifar10'], args.batch
  mesh = make_data_mesh(jax.devices()[:1])
  schedule = optim.Schedule('cyclic', lr_max=0.2, total_steps=1000, steps_per_epoch=100)
  images = np.asarray(jax.random.randint(jax.random.key(1), (batch, 32, 32, 3), 0, 256), np.uint8)
  labels = np.asarray(jax.random.randint(jax.random.key(2), (batch,), 0, 10), np.int32)
  inputs = shard_batch((images, labels, np.arange(batch, dtype=np.int32)), mesh)
  model = build_model(ml_collections.ConfigDict(dict(name='preact_resnet18', width=args.width,
                                                     conv=args.conv)), info)
  method = resolve_method(method_config(args.method), EPS)
  step = jax.jit(make_train_step(model, method, schedule, weight_decay=5e-4,
                                 augment_mode='crop_flip', key=jax.random.key(3)),
                 donate_argnums=0)
  frame = stored_frame_shape(info.image_shape, 'crop_flip')
  ts = init_train_state(model, jax.random.key(0), init_examples(method, batch, frame))
  ts = replicate(ts._replace(step=jnp.asarray(500, jnp.int32)), mesh)
  compiled = step.lower(ts, *inputs).compile()
  categories = hlo_categories(compiled.as_text())
  for _ in range(2):
    ts, metrics = compiled(ts, *inputs)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        ts, metrics = compiled(ts, *inputs)
      jax.block_until_ready(metrics)
    profile = jax.profiler.ProfileData.from_file(
        glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[0])
  totals, fusions = collections.Counter(), collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in categories:
          ms = event.duration_ns / 1e6 / args.steps
          totals[categories[event.name]] += ms
          if categories[event.name].startswith('network other'):
            fusions[re.sub(r'\.\d+$', '', event.name)] += ms
  total = sum(totals.values())
  print(f'fat_jax {args.method}, PreActResNet-18 width {args.width}, batch {batch}, '
        f'model.conv={args.conv}, {jax.default_backend()}: XLA op time per step '
        f'(summed over threads), mean of {args.steps} steps')
  for category, ms in totals.most_common():
    print(f'  {category:<48}{ms:>9.1f} ms {ms / total:>6.1%}')
  print(f'  {"all":<48}{total:>9.1f} ms')
  if args.fusions:
    print("the network's other operations (BN, ReLU, add) by XLA fusion kind: " + ', '.join(
        f'{name} {ms:.1f} ms' for name, ms in fusions.most_common()))
  counts = collections.Counter(c for c in categories.values() if c.startswith('conv '))
  print('convolutions in the compiled step: ' + ', '.join(
      f'{c[5:]} {counts[c]}' for c in ('conv forward', 'conv input gradient',
                                       'conv weight gradient')))
  if args.torch:
    profile_torch(args)


def profile_torch(args) -> None:
  """torch.profiler self CPU time per aten operator of step_time.py's PyTorch FGSM-RS step."""
  import torch  # pylint: disable=import-outside-toplevel
  run = torch_steps(args.width, args.batch)[0]['pytorch fgsm_rs']
  run(2)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    run(args.steps)
  rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
  total = sum(e.self_cpu_time_total for e in rows) / 1e3 / args.steps
  print(f'PyTorch fgsm_rs, width {args.width}, batch {args.batch}: self time per step of each '
        f'operator on the calling thread (its intra-op threads run inside it), mean of '
        f'{args.steps} steps')
  for e in rows[:14]:
    ms = e.self_cpu_time_total / 1e3 / args.steps
    print(f'  {e.key:<48}{ms:>9.1f} ms {ms / total:>6.1%}')
  print(f'  {"all":<48}{total:>9.1f} ms')


if __name__ == '__main__':
  main()
