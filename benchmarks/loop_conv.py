"""An attack's inner loop on CPU: XLA loops vs host loops, JAX's input-gradient convolution vs fat_jax's.

  python benchmarks/loop_conv.py                                  # MNIST net, 200 points
  python benchmarks/loop_conv.py --model=preact_resnet18 --width=16 --n=64 --steps=10

Times `--steps` sign-gradient steps δ ← clip(δ + α·sign ∇_δ CE(x + δ)) (the core of PGD and
APGD) on a fresh model, in interleaved rounds (median, seconds per step):

* ``python``: a Python loop calling one jitted step;
* ``fori``: one jitted `lax.fori_loop` (how the evaluation attacks are written);
* ``fori unroll=10``: the same, 10 steps per loop iteration;
* ``unrolled``: one jitted function with the steps written out (the training attacks);

each with JAX's own input-gradient convolution (``lax``: flax's default
`lax.conv_general_dilated`, whose transpose labels the kernel 01oi), with fat_jax's
(``xla``: `fat_jax.models.conv`, kernel 01io) and with the strided input gradients as the
transpose of an im2col matmul (``patch_input_grad``, what `--mode=eval` attacks run on);
`--convs` picks them. The last column is the share of δ's
entries equal to the Python loop's with fat_jax's convolution (differently compiled programs
may round differently; a sign step turns a rounding difference at a zero gradient into a
different entry).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fat_jax.data import DATASET_INFOS  # noqa: E402
from fat_jax.losses import cross_entropy  # noqa: E402
from fat_jax.methods import init_train_state  # noqa: E402
from fat_jax.models import build_model, core  # noqa: E402

core.CONV_IMPLS.setdefault('lax', None)   # flax's default convolution, for comparison only


def runners(model_name: str, width: int, n: int, steps: int, conv: str):
  dataset = 'fashion_mnist' if model_name == 'mnist_net' else 'cifar10'
  info = DATASET_INFOS[dataset]
  model = build_model(ml_collections.ConfigDict(dict(name=model_name, width=width,
                                                     conv=conv)), info)
  ts = init_train_state(model, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (n, *info.image_shape))
  y = jax.random.randint(jax.random.key(2), (n,), 0, info.num_classes)
  eps = 0.1 if dataset == 'fashion_mnist' else 8 / 255

  def step(params, d):
    loss = lambda d: cross_entropy(model.apply(params, ts.batch_stats, x + d, False)[0], y).sum()
    return jnp.clip(d + eps / 4 * jnp.sign(jax.grad(loss)(d)), -eps, eps)

  one = jax.jit(step)
  fori = jax.jit(lambda p, d: jax.lax.fori_loop(0, steps, lambda i, d: step(p, d), d))
  fori10 = jax.jit(lambda p, d: jax.lax.fori_loop(0, steps, lambda i, d: step(p, d), d,
                                                  unroll=min(10, steps)))

  @jax.jit
  def unrolled(p, d):
    for _ in range(steps):
      d = step(p, d)
    return d

  def python(p, d):
    for _ in range(steps):
      d = one(p, d)
    return d

  d0 = jnp.zeros_like(x)
  return ts.params, d0, {'python': python, 'fori': fori, 'fori unroll=10': fori10,
                         'unrolled': unrolled}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--model', default='mnist_net', help='mnist_net | cnn | preact_resnet18')
  p.add_argument('--width', type=int, default=16)
  p.add_argument('--n', type=int, default=200)
  p.add_argument('--steps', type=int, default=100)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--convs', default='lax,xla,patch_input_grad', help='model.conv values')
  args = p.parse_args()
  runs, results = {}, {}
  for conv in args.convs.split(','):
    params, d0, fns = runners(args.model, args.width, args.n, args.steps, conv)
    for name, fn in fns.items():
      results[(conv, name)] = np.asarray(jax.block_until_ready(fn(params, d0)))  # compiles
      runs[(conv, name)] = (fn, params, d0)
  reference = results[('xla', 'python')]
  same = {key: float(np.mean(value == reference)) for key, value in results.items()}
  times = {key: [] for key in runs}
  for _ in range(args.rounds):
    for key, (fn, params, d0) in runs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(params, d0))
      times[key].append((time.perf_counter() - t0) / args.steps)
  base = statistics.median(times[('xla', 'python')])
  print(f'{args.model} width {args.width}, {args.n} points, {args.steps} steps, '
        f'{jax.devices()[0].device_kind}')
  print(f"{'loop':<16}{'convolution':<18}{'ms/step':>9}{'× xla python':>18}"
        f"{'δ as xla python':>21}")
  for (conv, name), ts in times.items():
    t = statistics.median(ts)
    print(f"{name:<16}{conv:<18}{t * 1e3:>9.2f}{t / base:>18.2f}{same[(conv, name)]:>20.2%}")


if __name__ == '__main__':
  main()
