"""Per-layer convolution cost, XLA's gradient vs the im2col weight gradient (`fat_jax.models.conv`).

  python benchmarks/conv_grad.py                       # PreActResNet-18 widths 16 and 64, batch 64
  python benchmarks/conv_grad.py --torch --widths=16   # forward, input, weight gradient vs PyTorch

For every distinct convolution of PreActResNet-18 (32×32 input) it times, in interleaved rounds
(median), one jitted forward + input gradient + weight gradient of ``sum(conv(x, W) · g)``
with `jax.lax.conv_general_dilated` (XLA) and with `fat_jax.models.conv.conv_nhwc`
(forward and input gradient XLA's, weight gradient ``patches(x)ᵀ · g``), checks that both give
the same gradients, and prints the ratio and the formulation `fat_jax.models.conv` picks for the
layer (`use_patch_gradient`). With ``--torch`` it times instead each of the three alone, XLA's
(a jitted forward, ``vjp`` in x, ``vjp`` in W) next to PyTorch's (``conv2d``,
``torch.nn.grad.conv2d_input``, ``conv2d_weight``; NCHW, the layout PyTorch's CPU kernels
take), and prints XLA's time over PyTorch's for each.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

from fat_jax.models.conv import NHWC_HWIO, conv_nhwc, use_patch_gradient


def resnet18_layers(width: int) -> list[tuple[int, int, int, int, int]]:
  """Distinct (input size, in channels, out channels, kernel, stride) of PreActResNet-18, with
  how many times each occurs."""
  layers = [((32, 3, width, 3, 1), 1), ((32, width, width, 3, 1), 4)]
  size, cin = 32, width
  for stage in (1, 2, 3):
    cout = width * 2 ** stage
    layers += [((size, cin, cout, 3, 2), 1), ((size, cin, cout, 1, 2), 1),
               ((size // 2, cout, cout, 3, 1), 3)]
    size, cin = size // 2, cout
  return layers


def layer_step(conv, stride: int, padding: int):
  """jit of (x, W, g) ↦ ∇_(x, W) sum(conv(x, W) · g) (forward, input and weight gradient)."""
  pads = ((padding, padding), (padding, padding))
  loss = lambda x, w, g: jnp.sum(conv(x, w, (stride, stride), pads) * g)
  return jax.jit(jax.grad(loss, (0, 1)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--widths', default='16,64')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--torch', action='store_true',
                      help='forward, input and weight gradient apart, XLA next to PyTorch')
  args = parser.parse_args()
  if args.torch:
    compare_with_torch(args)
    return
  xla = lambda x, w, s, p: lax.conv_general_dilated(x, w, s, p, dimension_numbers=NHWC_HWIO)
  patch = lambda x, w, s, p: conv_nhwc(x, w, s, p, patch_weight_gradient=True)
  print(f'{jax.default_backend()}, {jax.device_count()} × {jax.devices()[0].device_kind}, '
        f'batch {args.batch}; ms per forward + input and weight gradient, median of '
        f'{args.rounds} interleaved rounds')
  print(f'{"width":>5} {"layer":<24}{"×":>3}{"XLA":>9}{"im2col":>9}{"im2col/XLA":>12}  used')
  for width in map(int, args.widths.split(',')):
    totals = {'xla': 0.0, 'patch': 0.0, 'used': 0.0}
    for (size, cin, cout, k, s), count in resnet18_layers(width):
      keys = jax.random.split(jax.random.key(0), 3)
      x = jax.random.normal(keys[0], (args.batch, size, size, cin))
      w = jax.random.normal(keys[1], (k, k, cin, cout)) / (k * k * cin) ** 0.5
      g = jax.random.normal(keys[2], (args.batch, size // s, size // s, cout))
      steps = {'xla': layer_step(xla, s, k // 2), 'patch': layer_step(patch, s, k // 2)}
      grads = {name: jax.block_until_ready(f(x, w, g)) for name, f in steps.items()}
      for ours, ref in zip(grads['patch'], grads['xla']):
        err = float(jnp.linalg.norm(ours - ref) / jnp.linalg.norm(ref))
        assert err < 1e-5, f'gradients differ ({err:.1e}) at {size}x{size}x{cin}->{cout} k{k}s{s}'
      times = {name: [] for name in steps}
      for _ in range(args.rounds):
        for name, f in steps.items():
          start = time.perf_counter()
          jax.block_until_ready(f(x, w, g))
          times[name].append(time.perf_counter() - start)
      t = {name: statistics.median(v) * 1e3 for name, v in times.items()}
      used = 'im2col' if use_patch_gradient(x.shape, w.shape, (s, s)) else 'XLA'
      totals['xla'] += count * t['xla']
      totals['patch'] += count * t['patch']
      totals['used'] += count * t['patch' if used == 'im2col' else 'xla']
      layer = f'{size}x{size}x{cin}->{cout} k{k} s{s}'
      print(f'{width:>5} {layer:<24}{count:>3}{t["xla"]:>9.1f}{t["patch"]:>9.1f}'
            f'{t["patch"] / t["xla"]:>12.2f}  {used}', flush=True)
    print(f'{width:>5} {"all convs (× count)":<27}{totals["xla"]:>9.1f}{totals["patch"]:>9.1f}'
          f'{totals["patch"] / totals["xla"]:>12.2f}  as used: {totals["used"]:.1f} ms '
          f'({totals["used"] / totals["xla"]:.2f} × XLA)')


def median_ms(runs: dict, rounds: int) -> dict:
  """Median wall time (ms) of each zero-argument callable in `runs`, in interleaved rounds."""
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(v) * 1e3 for name, v in times.items()}


def compare_with_torch(args) -> None:
  """Forward, input gradient and weight gradient of every distinct layer, XLA vs PyTorch."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from torch.nn.grad import conv2d_input, conv2d_weight  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit('--torch needs PyTorch in this environment (pip install torch)')
  kinds = ('forward', 'input grad', 'weight grad')
  print(f'{jax.default_backend()} vs PyTorch {torch.__version__} ({torch.get_num_threads()} '
        f'threads), batch {args.batch}; ms, median of {args.rounds} interleaved rounds')
  print(f'{"width":>5} {"layer":<24}{"×":>3}' + ''.join(f'{k + " XLA/torch":>26}' for k in kinds))
  for width in map(int, args.widths.split(',')):
    totals = {(k, lib): 0.0 for k in kinds for lib in ('xla', 'torch')}
    for (size, cin, cout, k, s), count in resnet18_layers(width):
      keys = jax.random.split(jax.random.key(0), 3)
      x = jax.random.normal(keys[0], (args.batch, size, size, cin))
      w = jax.random.normal(keys[1], (k, k, cin, cout)) / (k * k * cin) ** 0.5
      g = jax.random.normal(keys[2], (args.batch, size // s, size // s, cout))
      pads = ((k // 2, k // 2),) * 2
      conv = lambda x, w, s=s, pads=pads: lax.conv_general_dilated(x, w, (s, s), pads,
                                                                   dimension_numbers=NHWC_HWIO)
      xla = {'forward': jax.jit(conv),
             'input grad': jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
             'weight grad': jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])}
      xt, gt = (torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy()) for a in (x, g))
      wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy())
      runs = {
          ('forward', 'xla'): lambda: jax.block_until_ready(xla['forward'](x, w)),
          ('input grad', 'xla'): lambda: jax.block_until_ready(xla['input grad'](x, w, g)),
          ('weight grad', 'xla'): lambda: jax.block_until_ready(xla['weight grad'](x, w, g)),
          ('forward', 'torch'): lambda: torch.nn.functional.conv2d(xt, wt, stride=s,
                                                                   padding=k // 2),
          ('input grad', 'torch'): lambda: conv2d_input(xt.shape, wt, gt, stride=s,
                                                        padding=k // 2),
          ('weight grad', 'torch'): lambda: conv2d_weight(xt, wt.shape, gt, stride=s,
                                                          padding=k // 2)}
      for run in runs.values():   # compile / warm up
        run()
      t = median_ms(runs, args.rounds)
      for key, ms in t.items():
        totals[key] += count * ms
      layer = f'{size}x{size}x{cin}->{cout} k{k} s{s}'
      print(f'{width:>5} {layer:<24}{count:>3}' + ''.join(
          _pair(t[kind, 'xla'], t[kind, 'torch']) for kind in kinds), flush=True)
    print(f'{width:>5} {"all convs (× count)":<27}' + ''.join(
        _pair(totals[kind, 'xla'], totals[kind, 'torch']) for kind in kinds))


def _pair(xla_ms: float, torch_ms: float) -> str:
  return f'{xla_ms:>9.2f} {torch_ms:>7.2f} {xla_ms / torch_ms:>6.2f}×'.rjust(26)


if __name__ == '__main__':
  main()
