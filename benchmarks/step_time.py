"""Training-step time of each method relative to FGSM-RS, measured side by side.

  python benchmarks/step_time.py                         # PreActResNet-18 width 16, batch 64
  python benchmarks/step_time.py --width=64 --batch=128  # the paper's model (GPU)

Every method's jitted step runs on the same model, batch and device; the
methods are timed in interleaved rounds (median per method) so that machine
noise hits all of them alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections

from fat_jax import optim
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS, stored_frame_shape
from fat_jax.methods import init_examples, init_train_state, make_train_step, resolve_method
from fat_jax.models import build_model

# label → method config fields; `name` defaults to the label (the ε = 8/255 recipes: R-LAP,
# RS-AAER, GradAlign; AT-AWP and TRADES-AWP with their official γ).
METHODS = {
    'fgsm': {},
    'fgsm_stable': dict(name='fgsm', stable_alpha3=200.0),
    'fgsm_mep': {},
    'fd': {},
    'fgsm_rs': {},
    'n_fgsm': {},
    'lap': dict(init='uniform', init_scale=1.0, alpha=1.25, project=True, lap_beta=0.002),
    'aaer': dict(init='uniform', init_scale=1.0, alpha=1.25, project=True, aaer_lambda1=1.0,
                 aaer_lambda2=2.5, aaer_lambda3=1.5),
    'gradalign': {},
    'zerograd': {},
    'atas': {},
    'pgd_at': {},
    'trades': {},
    'mart': {},
    'awp_pgd_at': dict(name='pgd_at', awp_gamma=0.01),
    'awp_trades': dict(name='trades', awp_gamma=0.005),
}


def method_config(label: str):
  c = default_config().method
  c.name = label
  for k, v in METHODS[label].items():
    c[k] = v
  return c


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='preact_resnet18')
  parser.add_argument('--width', type=int, default=16)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=3, help='steps per method per round')
  parser.add_argument('--methods', default='fgsm_rs,lap,aaer,gradalign')
  args = parser.parse_args()

  info = DATASET_INFOS['cifar10']
  model = build_model(ml_collections.ConfigDict(dict(name=args.model, width=args.width)), info)
  eps = 8 / 255
  schedule = optim.Schedule('cyclic', lr_max=0.2, total_steps=1000, steps_per_epoch=100)
  frame = stored_frame_shape(info.image_shape, 'crop_flip')
  images = jax.random.randint(jax.random.key(1), (args.batch, 32, 32, 3), 0, 256).astype(jnp.uint8)
  labels = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
  indices = jnp.arange(args.batch)
  names = args.methods.split(',')
  steps, states = {}, {}
  for name in names:
    method = resolve_method(method_config(name), eps)
    step = jax.jit(make_train_step(model, method, schedule, weight_decay=5e-4,
                                   augment_mode='crop_flip', key=jax.random.key(3)))
    states[name] = init_train_state(model, jax.random.key(0),
                                    init_examples(method, args.batch, frame))
    jax.block_until_ready(step(states[name], images, labels, indices))  # compile
    steps[name] = step
  times = {name: [] for name in names}
  for _ in range(args.rounds):
    for name in names:
      # lr > 0 (LAP's direction ≠ 0), past the warm-ups (ATAS's adaptive step).
      ts = states[name]._replace(step=jnp.asarray(500, jnp.int32))
      start = time.perf_counter()
      for _ in range(args.steps):
        ts, metrics = steps[name](ts, images, labels, indices)
      jax.block_until_ready(metrics)
      times[name].append((time.perf_counter() - start) / args.steps)
  base = statistics.median(times[names[0]])
  print(f'{args.model} width {args.width}, batch {args.batch}, {jax.devices()[0].device_kind} '
        f'({jax.default_backend()}), median of {args.rounds} rounds × {args.steps} steps')
  print(f'{"method":<12}{"s/step":>10}{"images/s":>12}{"× " + names[0]:>14}')
  for name in names:
    t = statistics.median(times[name])
    print(f'{name:<12}{t:>10.4f}{args.batch / t:>12.1f}{t / base:>14.3f}')


if __name__ == '__main__':
  main()
