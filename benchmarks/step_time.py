"""Training-step throughput of each method, data-parallel over the devices, relative to FGSM-RS.

  python benchmarks/step_time.py                                  # PreActResNet-18 width 16
  python benchmarks/step_time.py --width=64 --batch-per-device=128 \\
      --methods=fgsm_rs,n_fgsm,lap,aaer,gradalign,pgd_at --dtypes=float32,bfloat16 --torch  # GPU
  python benchmarks/step_time.py --model=wrn34_10 --batch-per-device=128 --methods=fgsm_rs,lap

`--model` is a network of `NETWORKS` (WideResNet-34-10 and ViT-small as the official
`LAP.py --model WideResNet | Vit` builds them, and tiny versions for smoke runs) or any
`model.name` (`--width` sets `model.width`, PreActResNet-18's).
Every method's jitted step runs on the same model and global batch (`--batch-per-device` ×
the devices of a ``data`` mesh: parameters replicated, the batch split, BatchNorm over the
global batch, state donated), with on-device crop/flip augmentation; methods are timed in
interleaved rounds (median per method) so that machine noise hits all of them alike.
`--dtypes=float32,bfloat16` times every method in both compute dtypes (bfloat16: forwards in
bfloat16 with float32 weights, model.dtype), labelled "method/bf16"; likewise
`--convs=xla,im2col_grad` times every method with each convolution (model.conv,
`fat_jax.models.conv`), labelled "method/im2col_grad".
`--torch` adds a straightforward PyTorch FGSM-RS step (locuslab's PreActResNet-18 with the
same width, SGD momentum 0.9 and weight decay 5e-4, the same augmentation, ε and α, on one
device at the per-device batch, in float32) and a PyTorch LAP step with the official code's
structure (`torch_steps`), timed in the same rounds.
`--json=PATH` also writes the table as JSON, with each step's device memory: XLA's plan for
the compiled step (arguments + outputs − donated + temporaries, `memory_analysis()`) and,
where the device reports it (GPU), the process's peak bytes in use after the method's first
step. JAX cannot reset that peak, so it is cumulative over the methods in the order run:
the first method's is its own, a later one's only says that it did not need more than that.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax import optim
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS, shard_batch, stored_frame_shape
from fat_jax.methods import init_examples, init_train_state, make_train_step, resolve_method
from fat_jax.models import build_model
from fat_jax.parallel import make_data_mesh, replicate
from fat_jax.recipes import AWP_GAMMA

# label → method config fields, a component's in a nested dict (its section); `name` defaults
# to the label (the ε = 8/255 recipes: R-LAP, RS-AAER, GradAlign; AT-AWP and TRADES-AWP with
# their official γ).
METHODS = {
    'fgsm': {},
    'fgsm_stable': dict(name='fgsm', stable=dict(alpha3=200.0)),
    'fgsm_mep': {},
    'fd': {},
    'fgsm_rs': {},
    'n_fgsm': {},
    'lap': dict(init='uniform', init_scale=1.0, alpha=1.25, project=True, lap=dict(beta=0.002)),
    'aaer': dict(init='uniform', init_scale=1.0, alpha=1.25, project=True,
                 aaer=dict(lambda1=1.0, lambda2=2.5, lambda3=1.5)),
    'gradalign': {},
    'zerograd': {},
    'atas': {},
    'pgd_at': {},
    'trades': {},
    'mart': {},
    'awp_pgd_at': dict(name='pgd_at', awp=dict(gamma=AWP_GAMMA['pgd_at'])),
    'awp_trades': dict(name='trades', awp=dict(gamma=AWP_GAMMA['trades'])),
}
EPS = 8 / 255
DTYPE_LABELS = {'bfloat16': 'bf16'}

# label → model config fields (over `default_config().model`): the networks of the official
# `LAP.py --model WideResNet | Vit` (tmllab/2024_ICML_LAP; `AAER.py --model WideResNet` builds
# the same WideResNet), and tiny versions of both for smoke runs on a CPU.
NETWORKS = {
    'wrn34_10': {'name': 'wide_resnet', 'depth': 34, 'widen_factor': 10},
    'vit_small': {'name': 'vit_small'},
    'wrn10_1': {'name': 'wide_resnet', 'depth': 10, 'widen_factor': 1},
    'vit_tiny': {'name': 'vit_small', 'vit': {'embed_dim': 32, 'depth': 2, 'num_heads': 2}},
}


def method_config(label: str):
  c = default_config().method
  c.name = label
  c.update(METHODS[label])
  return c


def model_config(model: str, width: int = 64, dtype: str = 'float32', conv: str = 'xla'):
  """The model config of `model` (a key of `NETWORKS`, else a `model.name`) over the defaults."""
  c = default_config().model
  c.update({'name': model, 'width': width, 'dtype': dtype, 'conv': conv})
  c.update(NETWORKS.get(model, {}))
  return c


def describe(c) -> str:
  """A model config in words: 'PreActResNet-18 width 64', 'WideResNet-34-10', 'ViT …'."""
  if c.name in ('wide_resnet', 'dm_wide_resnet'):
    kind = 'WideResNet' if c.name == 'wide_resnet' else 'DMWideResNet'
    return f'{kind}-{c.depth}-{c.widen_factor}'
  if c.name == 'vit_small':
    v = c.vit
    return (f'ViT (patch {v.patch_size}, D {v.embed_dim}, depth {v.depth}, {v.num_heads} heads, '
            f'MLP ×{v.mlp_ratio:g})')
  if c.name == 'preact_resnet18':
    return f'PreActResNet-18 width {c.width}'
  return c.name


def torch_steps(width: int, batch: int):
  """PyTorch FGSM-RS and LAP steps → ({label: run(steps)}, device label).

  FGSM-RS: the plain `locuslab/fast_adversarial` CIFAR-10 loop (the attack's backward takes the
  input gradient only). LAP: the structure of `tmllab/2024_ICML_LAP` CIFAR10/LAP.py: the
  start forward's backward computes the weight gradient too and the optimiser steps on it
  (model and optimiser state saved before and restored after, ``load_state_dict``), the
  layer-weighted scaled difference β·(1 − (ln l / ln L)^γ)·‖w‖/‖Δw‖·Δw is added to the
  weights, then the training forward and backward at x + δ.
  """
  import copy  # pylint: disable=import-outside-toplevel
  import math  # pylint: disable=import-outside-toplevel

  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from torch_models import Normalized, preact_resnet18  # pylint: disable=import-outside-toplevel

  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  info = DATASET_INFOS['cifar10']
  model = Normalized(preact_resnet18(width), info.mean, info.std).to(device).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
  labels = torch.randint(0, 10, (batch,), device=device)
  rows = torch.arange(32, device=device)

  def augment():
    # Random crop (4-pixel zero padding) and flip, as fat_jax's on-device augmentation.
    x = F.pad(images.float() / 255, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2, batch, 1), device=device)
    x = x[torch.arange(batch, device=device)[:, None, None], :, (dy + rows)[:, :, None],
          (dx + rows)[:, None, :]].permute(0, 3, 1, 2)
    flip = torch.rand(batch, device=device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)

  def fgsm_rs_step():
    x = augment()
    delta = (torch.rand_like(x) * 2 - 1) * EPS
    delta = (delta.clamp(-x, 1 - x)).requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), labels)
    grad, = torch.autograd.grad(loss, delta)
    delta = (delta + 1.25 * EPS * grad.sign()).clamp(-EPS, EPS)
    delta = torch.max(torch.min(delta, 1 - x), -x).detach()
    loss = F.cross_entropy(model(x + delta), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  weights = [name for name, w in model.state_dict().items() if w.dim() > 1 and 'weight' in name]

  def lap_step(beta=0.002, gamma=0.3):
    x = augment()
    delta = ((torch.rand_like(x) * 2 - 1) * EPS).clamp(-x, 1 - x).requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), labels)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    loss.backward()
    opt.step()
    delta = (delta + 1.25 * EPS * delta.grad.sign()).clamp(-EPS, EPS)
    delta = torch.max(torch.min(delta, 1 - x), -x).detach()
    stepped = model.state_dict()
    diff = {k: saved_model[k].norm() / ((stepped[k] - saved_model[k]).norm() + 1e-20)
               * (stepped[k] - saved_model[k]) for k in weights}
    model.load_state_dict(saved_model)
    opt.load_state_dict(saved_opt)
    with torch.no_grad():
      for count, (name, param) in enumerate(
          ((n, p) for n, p in model.named_parameters() if n in diff), start=1):
        param.add_((1 - (math.log(count) / math.log(len(diff))) ** gamma) * beta * diff[name])
    loss = F.cross_entropy(model(x + delta), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  def runner(step):
    def run(steps: int):
      for _ in range(steps):
        loss = step()
      if device.type == 'cuda':
        torch.cuda.synchronize()
      return float(loss.detach())
    return run

  return ({'pytorch fgsm_rs': runner(fgsm_rs_step), 'pytorch lap': runner(lap_step)},
          f'{torch.__version__} on {device}')


def jax_runner(step, ts, inputs):
  """`run(steps)`: `steps` training steps from the last state, waited for."""
  state = [ts]

  def run(steps: int):
    for _ in range(steps):
      state[0], metrics = step(state[0], *inputs)
    jax.block_until_ready(metrics)

  return run


def compiled_bytes(compiled) -> int | None:
  """Device bytes XLA plans for a compiled step: arguments + outputs − donated + temporaries."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def peak_bytes_in_use(device) -> int | None:
  """The process's peak device bytes so far (None where the backend does not report it)."""
  stats = device.memory_stats()
  return None if not stats or 'peak_bytes_in_use' not in stats else int(stats['peak_bytes_in_use'])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='preact_resnet18',
                      help=f'a network of {sorted(NETWORKS)} or a model.name')
  parser.add_argument('--width', type=int, default=16, help='model.width (PreActResNet-18)')
  parser.add_argument('--batch-per-device', type=int, default=64)
  parser.add_argument('--devices', type=int, default=0, help='how many devices (0 = all)')
  parser.add_argument('--dtypes', default='float32',
                      help='comma-separated compute dtypes: float32, bfloat16 (mixed precision)')
  parser.add_argument('--convs', default='xla',
                      help='comma-separated model.conv values: xla, im2col_grad')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=3, help='steps per method per round')
  parser.add_argument('--methods', default='fgsm_rs,lap,aaer,gradalign')
  parser.add_argument('--torch', action='store_true', help='add the PyTorch FGSM-RS step')
  parser.add_argument('--json', default='', help='also write the results as JSON to this path')
  args = parser.parse_args()
  if args.torch and model_config(args.model).name != 'preact_resnet18':
    raise SystemExit(f'--torch times PreActResNet-18 steps: leave it out with '
                     f'--model={args.model}.')

  devices = jax.devices()[:args.devices or None]
  mesh = make_data_mesh(devices)
  batch = args.batch_per_device * len(devices)
  info = DATASET_INFOS['cifar10']
  schedule = optim.Schedule('cyclic', lr_max=0.2, total_steps=1000, steps_per_epoch=100)
  frame = stored_frame_shape(info.image_shape, 'crop_flip')
  images = np.asarray(jax.random.randint(jax.random.key(1), (batch, 32, 32, 3), 0, 256), np.uint8)
  labels = np.asarray(jax.random.randint(jax.random.key(2), (batch,), 0, 10), np.int32)
  inputs = shard_batch((images, labels, np.arange(batch, dtype=np.int32)), mesh)
  methods, dtypes, convs = args.methods.split(','), args.dtypes.split(','), args.convs.split(',')
  unknown = [n for n in methods if n not in METHODS]
  if unknown:
    raise SystemExit(f'Unknown methods {unknown}; known: {sorted(METHODS)}.')
  runs, memory = {}, {}
  for dtype, conv in [(d, c) for d in dtypes for c in convs]:
    model = build_model(model_config(args.model, args.width, dtype, conv), info)
    for label in methods:
      method = resolve_method(method_config(label), EPS)
      step = jax.jit(make_train_step(model, method, schedule, weight_decay=5e-4,
                                     augment_mode='crop_flip', key=jax.random.key(3)),
                     donate_argnums=0)
      # lr > 0 (LAP's direction ≠ 0), past the warm-ups (ATAS's adaptive step).
      ts = init_train_state(model, jax.random.key(0), init_examples(method, batch, frame))
      ts = replicate(ts._replace(step=jnp.asarray(500, jnp.int32)), mesh)
      name = label if dtype == 'float32' else f'{label}/{DTYPE_LABELS.get(dtype, dtype)}'
      name = name if conv == convs[0] else f'{name}/{conv}'
      compiled = step.lower(ts, *inputs).compile()
      runs[name] = jax_runner(compiled, ts, inputs)
      runs[name](1)  # warm-up
      memory[name] = {'compiled_bytes': compiled_bytes(compiled),
                      'process_peak_bytes': peak_bytes_in_use(devices[0])}
  names = list(runs)
  torch_label = None
  if args.torch:
    torch_runs, torch_label = torch_steps(args.width, args.batch_per_device)
    for name, run in torch_runs.items():
      runs[name] = run
      run(1)  # warm-up (cuDNN autotuning)
  times = {name: [] for name in runs}
  for _ in range(args.rounds):
    for name, run in runs.items():
      start = time.perf_counter()
      run(args.steps)
      times[name].append((time.perf_counter() - start) / args.steps)

  base = statistics.median(times[names[0]])
  if args.json:
    write_json(args, devices, batch, names, times, memory, torch_label)
  print(f'{describe(model_config(args.model, args.width))}, {len(devices)} × '
        f'{devices[0].device_kind} '
        f'({jax.default_backend()}), batch {args.batch_per_device}/device = {batch}, '
        f'median of {args.rounds} rounds × {args.steps} steps')
  print(f'{"method":<24}{"s/step":>10}{"images/s":>12}{"× " + names[0]:>14}{"XLA MiB":>10}')
  for name in names:
    t = statistics.median(times[name])
    mib = memory[name]['compiled_bytes']
    print(f'{name:<24}{t:>10.4f}{batch / t:>12.1f}{t / base:>14.3f}'
          f'{"" if mib is None else f"{mib / 2**20:.0f}":>10}')
  if torch_label:
    t = statistics.median(times['pytorch fgsm_rs'])
    per_device = args.batch_per_device / t
    print(f'{"pytorch fgsm_rs":<24}{t:>10.4f}{per_device:>12.1f}   (PyTorch {torch_label}, '
          f'batch {args.batch_per_device}, float32)')
    t_lap = statistics.median(times['pytorch lap'])
    print(f'{"pytorch lap":<24}{t_lap:>10.4f}{args.batch_per_device / t_lap:>12.1f}'
          f'{t_lap / t:>14.3f}   (× pytorch fgsm_rs; official LAP step structure)')
    for name in (n for n in names if n.split('/')[0] == 'fgsm_rs' and '/bf16' not in n):
      jax_per_device = batch / statistics.median(times[name]) / len(devices)
      print(f'fat_jax {name} images/s per device / PyTorch FGSM-RS: '
            f'{jax_per_device / per_device:.2f}x')


def write_json(args, devices, batch, names, times, memory, torch_label) -> None:
  """The table as JSON: per method s/step, images/s (global batch), ratio to the first
  method, device memory; the PyTorch step and the per-device ratio when timed."""
  base = statistics.median(times[names[0]])
  rows = {name: {'s_per_step': statistics.median(times[name]),
                 'images_per_s': batch / statistics.median(times[name]),
                 f'x_{names[0]}': statistics.median(times[name]) / base, **memory[name]}
          for name in names}
  out = {'model': args.model, 'width': args.width,
         'network': describe(model_config(args.model, args.width)), 'devices': len(devices),
         'device_kind': devices[0].device_kind, 'backend': jax.default_backend(),
         'jax': jax.__version__, 'batch_per_device': args.batch_per_device, 'batch': batch,
         'rounds': args.rounds, 'steps': args.steps, 'methods': rows}
  if torch_label:
    t = statistics.median(times['pytorch fgsm_rs'])
    out['pytorch_fgsm_rs'] = {'s_per_step': t, 'images_per_s': args.batch_per_device / t,
                              'label': torch_label}
    if 'fgsm_rs' in names:
      jax_per_device = batch / statistics.median(times['fgsm_rs']) / len(devices)
      out['fgsm_rs_over_pytorch'] = jax_per_device / out['pytorch_fgsm_rs']['images_per_s']
  with open(args.json, 'w', encoding='utf-8') as f:
    json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
