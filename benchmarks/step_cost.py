"""FLOPs and bytes accessed per training step of each method, from XLA's cost analysis.

  python benchmarks/step_cost.py       # 8 methods × PreActResNet-18, WideResNet-34-10, ViT-small
  python benchmarks/step_cost.py --networks=wrn34_10 --methods=fgsm,lap --json=cost.json

Each method's training step (`fat_jax.methods.make_train_step` with the method's ε = 8/255
settings of benchmarks/step_time.py: torch SGD with weight decay 5e-4, on-device crop and flip)
is lowered for abstract CIFAR-10 inputs (uint8 images, labels and indices of one batch) and an
abstract train state (`jax.eval_shape`: no parameter is allocated), compiled for the default
backend and never run, so WideResNet-34-10 fits a small CPU machine. `cost_analysis()` of the
compiled step counts the floating-point operations and bytes accessed of its optimised HLO,
loops with their trip counts (PGD-10's ten attack steps are all in). The same is done for one
inference forward of the batch (`train=False`); "forwards" is the step's FLOPs in such forwards.

FLOPs are the step's arithmetic and hardly depend on the backend; bytes accessed follow the
backend's fusions, so they compare methods on one backend. "× fgsm" (FLOPs and bytes) is the
ratio to the FGSM step of the same network; the FLOPs ratio is the work ratio that predicts
the ratio of step times on any device where the step is compute-bound.
Networks: `preact_resnet18` (width `--width`) and the labels of step_time.NETWORKS.

Each network's header also gives the cost of one training-mode forward of the batch and the
backward of its mean cross-entropy to every weight (no input gradient): a standard step
without the optimiser update. Where PyTorch is importable, the same forward and forward +
backward of the official structures, written in PyTorch below (`locuslab/fast_adversarial`
PreActResNet-18, `yaodongyu/TRADES` WideResNet), are counted by
`torch.utils.flop_counter.FlopCounterMode` on the 'meta' device (nothing computed), next to
XLA's counts. Both count 2 FLOPs per multiply-add, but FlopCounterMode counts every kernel tap
of a convolution and nothing else, while XLA's cost analysis counts only the taps that read the
image, not its zero padding (the share of border taps grows as the maps shrink), and adds
BatchNorm, activations and the loss.
Without PyTorch one line says so.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp

from fat_jax import optim
from fat_jax.data import DATASET_INFOS, stored_frame_shape
from fat_jax.methods import init_examples, init_train_state, make_train_step, resolve_method
from fat_jax.models import build_model
# pylint: disable-next=wrong-import-order
from step_time import EPS, METHODS, describe, method_config, model_config

DEFAULT_METHODS = 'fgsm,fgsm_rs,n_fgsm,gradalign,lap,aaer,pgd_at,trades'
DEFAULT_NETWORKS = 'preact_resnet18,wrn34_10,vit_small'
COUNTS = ('flops', 'bytes accessed')


def cost(compiled) -> dict[str, float]:
  """{'flops', 'bytes accessed'} of a compiled computation. `cost_analysis()` returns one dict
  (jax 0.10) or a list of dicts, one per HLO module (other jax versions); a list is summed."""
  analysis = compiled.cost_analysis()
  parts = analysis if isinstance(analysis, (list, tuple)) else [analysis]
  if not parts or any(not p or 'flops' not in p for p in parts):
    raise SystemExit(f'XLA gives no cost analysis on the {jax.default_backend()} backend.')
  return {k: float(sum(p.get(k, 0.0) for p in parts)) for k in COUNTS}


def abstract_batch(batch: int, image_shape: tuple[int, ...]):
  """Shapes of `train_step`'s (images, labels, indices): uint8 images, int32 labels/indices."""
  return (jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8),
          jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((batch,), jnp.int32))


def network_cost(model, batch: int) -> tuple[int, dict[str, float]]:
  """(parameter count, cost of one inference forward of `batch` images) of `model`."""
  params, state = jax.eval_shape(model.init, jax.random.key(0))
  n_params = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
  x = jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32)
  forward = jax.jit(lambda p, s, x: model.apply(p, s, x, False)[0])
  return n_params, cost(forward.lower(params, state, x).compile())


def training_cost(model, batch: int) -> tuple[dict[str, float], dict[str, float]]:
  """XLA cost of one training-mode forward of `batch` images, and of that forward with the
  backward of the mean cross-entropy to every weight (BatchNorm on batch statistics)."""
  params, state = jax.eval_shape(model.init, jax.random.key(0))

  def loss(p, s, x, y):
    logits = model.apply(p, s, x, True)[0]
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1).mean()

  x = jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  return (cost(jax.jit(loss).lower(params, state, x, y).compile()),
          cost(jax.jit(jax.grad(loss)).lower(params, state, x, y).compile()))


def torch_network(config, num_classes: int = 10):
  """The official PyTorch structure of a model config (`torch_models`), or None where none is
  written: PreActResNet-18 of `locuslab/fast_adversarial` (any width) and the WideResNet of
  `yaodongyu/TRADES` (any depth and widen factor). ImportError without PyTorch."""
  import torch_models  # pylint: disable=import-outside-toplevel

  if config.name == 'preact_resnet18' and config.head_bn_relu:
    return torch_models.preact_resnet18(config.width, num_classes)
  if config.name == 'wide_resnet':
    return torch_models.wide_resnet(config.depth, config.widen_factor, num_classes)
  return None


def torch_cost(network, batch: int, image_shape: tuple[int, ...]) -> dict[str, float]:
  """FlopCounterMode totals of one training-mode forward of `batch` images and of that forward
  with the cross-entropy backward (weights only), on the 'meta' device; the parameter count."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel

  network = network.to('meta').train()
  h, w, c = image_shape
  x = torch.empty(batch, c, h, w, device='meta')
  y = torch.zeros(batch, dtype=torch.long, device='meta')
  with FlopCounterMode(display=False) as forward:
    network(x)
  with FlopCounterMode(display=False) as both:
    torch.nn.functional.cross_entropy(network(x), y).backward()
  return {'params': sum(p.numel() for p in network.parameters()),
          'forward_flops': float(forward.get_total_flops()),
          'forward_backward_flops': float(both.get_total_flops()), 'torch': torch.__version__}


def step_cost(model, label: str, batch: int, image_shape: tuple[int, ...]) -> dict[str, float]:
  """Cost of `label`'s (a key of step_time.METHODS) compiled training step at `batch`."""
  method = resolve_method(method_config(label), EPS)
  schedule = optim.Schedule('cyclic', lr_max=0.2, total_steps=1000, steps_per_epoch=100)
  step = make_train_step(model, method, schedule, weight_decay=5e-4, augment_mode='crop_flip',
                         key=jax.random.key(3))
  frame = stored_frame_shape(image_shape, 'crop_flip')
  ts = jax.eval_shape(lambda key: init_train_state(model, key, init_examples(method, batch, frame)),
                      jax.random.key(0))
  lowered = jax.jit(step, donate_argnums=0).lower(ts, *abstract_batch(batch, image_shape))
  return cost(lowered.compile())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--networks', default=DEFAULT_NETWORKS,
                      help='comma-separated: preact_resnet18 and the labels of step_time.NETWORKS')
  parser.add_argument('--width', type=int, default=64, help='PreActResNet-18 width')
  parser.add_argument('--methods', default=DEFAULT_METHODS)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--json', default='', help='also write the results as JSON to this path')
  args = parser.parse_args()
  methods, networks = args.methods.split(','), args.networks.split(',')
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise SystemExit(f'Unknown methods {unknown}; known: {sorted(METHODS)}.')
  info = DATASET_INFOS['cifar10']
  base = 'fgsm' if 'fgsm' in methods else methods[0]
  results = {'backend': jax.default_backend(), 'jax': jax.__version__, 'batch': args.batch,
             'eps': EPS, 'networks': {}}
  print(f'XLA cost analysis of compiled training steps: batch {args.batch}, CIFAR-10 shapes, '
        f'ε = 8/255, {jax.default_backend()} backend, jax {jax.__version__}.')
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
    has_torch = True
  except ImportError:
    has_torch = False
    print('PyTorch is not importable here: no torch.utils.flop_counter counts next to XLA\'s.')
  for name in networks:
    config = model_config(name, args.width)
    model = build_model(config, info)
    n_params, forward = network_cost(model, args.batch)
    train_forward, train_both = training_cost(model, args.batch)
    print(f"\n{describe(config)}: {n_params:,} parameters; one inference forward of the batch "
          f"{forward['flops'] / 1e9:.1f} GFLOP; training forward {train_forward['flops'] / 1e9:.1f}"
          f" GFLOP, forward + backward (weights) {train_both['flops'] / 1e9:.1f} GFLOP")
    network = torch_network(config) if has_torch else None
    reference = torch_cost(network, args.batch, info.image_shape) if network else None
    if reference:
      print(f"PyTorch {reference['torch']} FlopCounterMode, official structure "
            f"({reference['params']:,} parameters): forward "
            f"{reference['forward_flops'] / 1e9:.1f} GFLOP, forward + backward "
            f"{reference['forward_backward_flops'] / 1e9:.1f} GFLOP; XLA / PyTorch "
            f"{train_forward['flops'] / reference['forward_flops']:.3f} and "
            f"{train_both['flops'] / reference['forward_backward_flops']:.3f}")
    elif has_torch:
      print(f'(no PyTorch structure of {describe(config)} is written in this benchmark)')
    print()
    print(f'| method | GFLOP/step | GB/step | FLOPs × {base} | bytes × {base} | forwards |')
    print('|---|---:|---:|---:|---:|---:|', flush=True)
    rows = {}
    for label in (base, *(m for m in methods if m != base)):
      start = time.perf_counter()
      row = rows[label] = {**step_cost(model, label, args.batch, info.image_shape),
                           'compile_s': time.perf_counter() - start}
      row['flops_x_base'] = row['flops'] / rows[base]['flops']
      row['bytes_x_base'] = row['bytes accessed'] / rows[base]['bytes accessed']
      row['forwards'] = row['flops'] / forward['flops']
      print(f"| {label} | {row['flops'] / 1e9:.1f} | {row['bytes accessed'] / 1e9:.2f} | "
            f"{row['flops_x_base']:.2f} | {row['bytes_x_base']:.2f} | {row['forwards']:.2f} |",
            flush=True)
    results['networks'][name] = {'network': describe(config), 'params': n_params,
                                 'forward': forward, 'train_forward': train_forward,
                                 'train_forward_backward': train_both,
                                 'pytorch_flop_counter': reference, 'base': base, 'methods': rows}
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
