"""AutoAttack-standard throughput (points/s) next to PGD-50-10 on the same model and points.

  python benchmarks/eval_throughput.py                       # small CNN, CPU-friendly
  python benchmarks/eval_throughput.py --model=preact_resnet18 --width=64 --n=512
  python benchmarks/eval_throughput.py --workdir=runs/quickstart/fgsm --n=256   # a trained run
  python benchmarks/eval_throughput.py --workdir=runs/quickstart/fgsm --norm=Linf,L2  # both
  python benchmarks/torch_mnist_net.py --out=runs/mnist_net.pth        # a PyTorch model, then
  python benchmarks/eval_throughput.py --torch-file=runs/mnist_net.pth --dataset=fashion_mnist \
      --eps=0.1 --n=200 --batch-size=500 --reference       # fat_jax's AA next to the reference
  python benchmarks/eval_throughput.py --torch-from-run=runs/cifar_sweep/n_fgsm_eps8_s0 \
      --n=200 --batch-size=256 --reference    # a fat_jax run, its weights exported to PyTorch

`--norm` lists the threat models (L2 radius `--eps-l2`, default 0.5); each runs PGD-50-10 and
AutoAttack-standard.

Without --workdir the model is freshly initialised and labelled with its own predictions
(clean accuracy 1) and ε is small, so most points survive every attack and each attack runs
its full course: the worst case for AutoAttack's cost. With --workdir, the run's latest
checkpoint and the first n test points of its data set (its config.json). Each suite runs
once on the same points (checks off); the time JAX spends tracing and compiling (reported by
`jax.monitoring`, reading programs back from JAX's persistent compilation cache included) is
subtracted; `--compilation-cache=FOLDER` keeps the programs there (`config.compilation_cache`),
so that a second process reads them back. Batches are split over all devices (a `data` mesh;
on a CPU `--cpu-devices`, as `config.cpu_devices`, makes each core a device by default);
`--dtype=bfloat16` runs the model in mixed precision. The table lists that time, points/s, passes per point, robust
accuracy per attack, and AA's cost relative to PGD; `--json=PATH` writes it as JSON too.
`--pgd-steps`, `--pgd-restarts`, `--apgd-steps`, `--fab-steps` and `--square-queries` shrink
the attacks (e.g. for a smoke test of the script); the defaults are PGD-50-10 and AutoAttack's.

`--torch-file` evaluates a PyTorch ``state_dict`` (`--source`, a `fat_jax.formats.convert` source,
default locuslab_mnist), converted into a temporary run directory. `--torch-from-run=WORKDIR`
goes the other way: fat_jax evaluates the run's latest checkpoint, and its weights, exported
into the PyTorch network (`torch_models.state_dict_from_flax`), are --torch-file (a
PreActResNet-18 or MNIST net run; needs torch). `--reference` also runs
the reference AutoAttack (Croce & Hein's ``autoattack``, or PyPI's ``pyautoattack``, the
same code; version 'standard') on the same points with the same file loaded into PyTorch
(`benchmarks/torch_models.py`: locuslab's MNIST net or PreActResNet-18, behind the fat_jax
model's input normalisation), prints the largest difference of the two networks' logits on
the points, fat_jax's AutoAttack-standard points/s over the reference's, both robust
accuracies (L∞) and on how many points their per-point robust flags agree.
The reference runs its own sanity checks (a few forward passes); its per-attack times are
the ones it logs. Without PyTorch or the package it says so and skips the reference.

docs/throughput.md has a run of each kind and what limits the CPU figures.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import logging
import os
import re
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
from jax import monitoring

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fat_jax.config import default_config  # noqa: E402
from fat_jax.data import DATASET_INFOS  # noqa: E402
from fat_jax.evaluate import evaluate  # noqa: E402
from fat_jax.formats.convert import convert  # noqa: E402
from fat_jax.launch import use_compilation_cache  # noqa: E402
from fat_jax.methods import init_train_state  # noqa: E402
from fat_jax.models import build_model  # noqa: E402
from fat_jax.parallel import cpu_device_count, make_data_mesh, split_cpu_cores  # noqa: E402
from fat_jax.run.runs import Run  # noqa: E402


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--workdir', default='', help='a training run (config.json + checkpoints)')
  p.add_argument('--model', default='cnn', help='cnn | mnist_net | resnet18 | preact_resnet18')
  p.add_argument('--width', type=int, default=8)
  p.add_argument('--depth', type=int, default=4)
  p.add_argument('--dataset', default=None,
                 help='image shape and classes (no data read), or --torch-file\'s data set')
  p.add_argument('--data-dir', default='', help="--torch-file's data folder (data.dir)")
  p.add_argument('--torch-file', default='', help='a PyTorch state_dict to convert and evaluate')
  p.add_argument('--torch-from-run', default='',
                 help='a PreActResNet-18 or MNIST net training run: fat_jax evaluates it, and '
                      'its weights exported to PyTorch are --torch-file (needs torch)')
  p.add_argument('--torch-init', default='',
                 help='mnist_net | preact_resnet18: a freshly initialised PyTorch network '
                      '(--seed, --width) as --torch-file (needs torch)')
  p.add_argument('--source', default='',
                 help="--torch-file's fat_jax.formats.convert source (default: locuslab_mnist, or "
                      "locuslab for --torch-init=preact_resnet18)")
  p.add_argument('--self-label', action='store_true',
                 help="label the points with the model's own predictions (all clean-correct)")
  p.add_argument('--reference', action='store_true',
                 help='also time the reference AutoAttack on --torch-file (needs torch)')
  p.add_argument('--repeat', type=int, default=1,
                 help='runs of AutoAttack in the process: the first cold, the others warm')
  p.add_argument('--conv', default=default_config().eval.conv,
                 help="model.conv of the evaluated model (--mode=eval's eval.conv)")
  p.add_argument('--n', type=int, default=64)
  p.add_argument('--eps', type=float, default=None, help='default 0.5/255, or the run\'s eps')
  p.add_argument('--batch-size', type=int, default=64)
  p.add_argument('--square-queries', type=int, default=5000)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--dtype', default='float32', help='float32 | bfloat16 (mixed precision)')
  p.add_argument('--norm', default='Linf', help='threat models, comma-separated: Linf,L2')
  p.add_argument('--eps-l2', type=float, default=0.5, help='the L2 radius')
  p.add_argument('--pgd-steps', type=int, default=50)
  p.add_argument('--pgd-restarts', type=int, default=10)
  p.add_argument('--apgd-steps', type=int, default=100, help="AutoAttack's APGD steps")
  p.add_argument('--fab-steps', type=int, default=100, help="AutoAttack's FAB-T steps")
  p.add_argument('--cpu-devices', default=default_config().cpu_devices,
                 help="config.cpu_devices: 'auto' = one single-threaded CPU device per core (as "
                      "--mode=eval), '1' = XLA's one device on all cores")
  p.add_argument('--compilation-cache', default=None,
                 help="config.compilation_cache for this process (a folder, 'auto', '' = off; "
                      "default: JAX's own setting, $JAX_COMPILATION_CACHE_DIR)")
  p.add_argument('--json', default='', help='also write the table as JSON to this path')
  return p.parse_args()


def random_model(args):
  """A fresh model and n random images labelled with its own predictions."""
  info = DATASET_INFOS[args.dataset or 'cifar10']
  config = ml_collections.ConfigDict(dict(name=args.model, width=args.width, depth=args.depth,
                                          batchnorm=True, dtype=args.dtype, conv=args.conv))
  model = build_model(config, info)
  ts = init_train_state(model, jax.random.key(args.seed))
  x = np.asarray(jax.random.uniform(jax.random.key(args.seed + 1), (args.n, *info.image_shape)))
  return model, ts, x, own_labels(model, ts, x), 0.5 / 255


def own_labels(model, ts, x: np.ndarray) -> np.ndarray:
  """The model's predicted class of each point (every point then starts correctly
  classified), in batches of 256."""
  return np.concatenate([np.asarray(model.apply(ts.params, ts.batch_stats, x[i:i + 256],
                                                False)[0].argmax(-1))
                         for i in range(0, len(x), 256)])


def trained_model(args):
  """The latest checkpoint of the run in --workdir and the first n test points."""
  run = Run.open(os.path.abspath(args.workdir))
  run.config.model.dtype = args.dtype
  if args.data_dir:
    run.config.data.dir = args.data_dir
  model, ts, _ = run.restore(conv=args.conv)
  x, y = run.points('test', args.n)
  if args.self_label:
    y = own_labels(model, ts, x)
  return model, ts, x, y, run.eval_eps


def torch_init(args) -> str:
  """A freshly initialised PyTorch network (`torch_models`, --torch-init, seeded by --seed)
  saved as a ``state_dict`` file; its path."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_models  # pylint: disable=import-outside-toplevel
  torch.manual_seed(args.seed)
  net = (torch_models.preact_resnet18(args.width) if args.torch_init == 'preact_resnet18'
         else torch_models.mnist_net())
  path = os.path.join(tempfile.mkdtemp(), f'{args.torch_init}.pth')
  torch.save(net.state_dict(), path)
  return path


# fat_jax model → the `fat_jax.formats.convert` source of its PyTorch network in `torch_models`.
TORCH_SOURCES = {'preact_resnet18': 'locuslab', 'mnist_net': 'locuslab_mnist'}


def torch_from_run(args) -> str:
  """--torch-from-run: the run's latest checkpoint (its model weights) saved as the
  ``state_dict`` of its `torch_models` network (`torch_models.state_dict_from_flax`); sets
  --workdir to the run and --source, --dataset to its. Returns the file's path."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_models  # pylint: disable=import-outside-toplevel
  run = Run.open(os.path.abspath(args.torch_from_run))
  model_config = run.config.model
  if model_config.name not in TORCH_SOURCES or not model_config.get('head_bn_relu', True):
    raise SystemExit(f'--torch-from-run: {run.workdir} holds a {model_config.name} (head_bn_relu '
                     f'{model_config.get("head_bn_relu", True)}); benchmarks/torch_models.py '
                     f'defines {sorted(TORCH_SOURCES)} (with the head BN-ReLU) in PyTorch.')
  info = DATASET_INFOS[run.config.data.name]
  _, ts, epoch = run.restore()
  state = torch_models.state_dict_from_flax(ts.params, ts.batch_stats, model_config,
                                            info.image_shape)
  path = os.path.join(tempfile.mkdtemp(), f'{run.name}_epoch{epoch}.pth')
  torch.save(state, path)
  args.workdir, args.source, args.dataset = run.workdir, TORCH_SOURCES[model_config.name], \
      run.config.data.name
  return path


def torch_reference_net(args, model):
  """--torch-file's network in PyTorch (`torch_models`), in [0, 1] pixels like the fat_jax
  `model`: behind `model`'s input normalisation (x − mean)/std where it has one."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_models  # pylint: disable=import-outside-toplevel
  state = torch.load(args.torch_file, map_location='cpu')
  num_classes = DATASET_INFOS[args.dataset or 'cifar10'].num_classes
  if args.source == 'locuslab_mnist':
    net = torch_models.mnist_net(num_classes)
  elif args.source == 'locuslab':
    net = torch_models.preact_resnet18(state['conv1.weight'].shape[0], num_classes)
  else:
    raise SystemExit('--reference: --source must be locuslab_mnist or locuslab (the networks '
                     'defined in PyTorch in benchmarks/torch_models.py)')
  net.load_state_dict(state)
  mean, std = model.module.mean, model.module.std
  return torch_models.Normalized(net, mean, std) if mean else net


def logit_gap(model, ts, net, x: np.ndarray, xt) -> float:
  """max |PyTorch logits − fat_jax logits| over the points (batches of 256)."""
  import torch  # pylint: disable=import-outside-toplevel
  gap = 0.0
  for i in range(0, len(x), 256):
    ours = np.asarray(model.apply(ts.params, ts.batch_stats, x[i:i + 256], False)[0])
    with torch.no_grad():
      theirs = net(xt[i:i + 256]).cpu().numpy()
    gap = max(gap, float(np.abs(ours - theirs).max()))
  return gap


def reference_autoattack(args, x, y, eps, model, ts):
  """The reference AutoAttack-standard (L∞) on --torch-file's network and the same points;
  `model` and `ts` are fat_jax's, whose logits the PyTorch network's are compared with.

  Returns (wall seconds, robust accuracy, {attack: cumulative seconds it logged}, per-point
  robust flags, max |logit difference|), or None (after saying why) when PyTorch or the
  package is missing.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    print('reference AutoAttack: skipped, PyTorch is not installed')
    return None
  for package in ('autoattack', 'pyautoattack'):
    try:
      auto_attack = importlib.import_module(package).AutoAttack
      break
    except ImportError:
      continue
  else:
    print('reference AutoAttack: skipped, neither autoattack (github.com/fra31/auto-attack) nor '
          'pyautoattack (PyPI) is installed')
    return None
  device = 'cuda' if torch.cuda.is_available() else 'cpu'   # where fat_jax runs, on a GPU
  net = torch_reference_net(args, model).to(device).eval()
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
  gap = logit_gap(model, ts, net, x, xt)
  print(f'PyTorch vs fat_jax logits on the {len(x)} points: max |difference| {gap:.2e}')
  yt = torch.from_numpy(np.asarray(y, np.int64)).to(device)
  adversary = auto_attack(net, norm='Linf', eps=eps, version='standard', seed=args.seed,
                          device=device)
  run = adversary.run_standard_evaluation
  batch = {('bs' if 'bs' in inspect.signature(run).parameters else 'batch_size'):
           args.batch_size}
  log, logger = io.StringIO(), logging.getLogger('auto-attack')
  handler, propagate, level = logging.StreamHandler(log), logger.propagate, logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.DEBUG)
  logger.propagate = False   # its per-attack lines are parsed, not printed
  try:
    with contextlib.redirect_stdout(log):
      t0 = time.time()
      out = run(xt, yt, **batch)
      if device == 'cuda':
        torch.cuda.synchronize()
      wall = time.time() - t0
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate
  x_adv = out[0] if isinstance(out, tuple) else out
  with torch.no_grad():
    flags = (net(x_adv).argmax(1) == yt).cpu().numpy()
  times = {m[0]: float(m[2]) for m in re.findall(
      r'robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)', log.getvalue())}
  return wall, float(flags.mean()), times, flags, gap


COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration',
                  '/jax/compilation_cache/cache_retrieval_time_sec')   # a program read back


def main():
  args = parse_args()
  compile_s = [0.0]

  def count_compilation(event, duration, **_):
    if event in COMPILE_EVENTS:
      compile_s[0] += duration

  monitoring.register_event_duration_secs_listener(count_compilation)
  split_cpu_cores(cpu_device_count(args.cpu_devices, True, args.batch_size))
  if args.compilation_cache is not None:
    use_compilation_cache(args.compilation_cache, jax.default_backend())
  if args.torch_init:
    args.torch_file = torch_init(args)
  if args.torch_from_run:
    args.torch_file = torch_from_run(args)
  args.source = args.source or ('locuslab' if args.torch_init == 'preact_resnet18'
                                else 'locuslab_mnist')
  if args.torch_file and not args.torch_from_run:
    args.workdir = convert(args.torch_file, os.path.join(tempfile.mkdtemp(), 'run'),
                           source=args.source, dataset=args.dataset, eps=args.eps)
  model, ts, x, y, eps = (trained_model if args.workdir else random_model)(args)
  eps = args.eps if args.eps is not None else eps
  norms = args.norm.split(',')
  suites = {}
  for norm in norms:
    radius = eps if norm == 'Linf' else args.eps_l2
    suites[f'pgd {norm}'] = dict(suite='pgd', pgd_steps=args.pgd_steps,
                                 pgd_restarts=args.pgd_restarts, norm=norm, eps=radius)
    aa = dict(suite='aa_standard', square_queries=args.square_queries,
              apgd_steps=args.apgd_steps, fab_steps=args.fab_steps, norm=norm, eps=radius)
    suites[f'aa_standard {norm}'] = aa
    for r in range(1, args.repeat):
      suites[f'aa_standard {norm} warm' + (f' {r}' if args.repeat > 2 else '')] = aa
  rows = {}
  for name, kw in suites.items():
    compile_s[0], t0 = 0.0, time.time()
    report = evaluate(model.apply, ts.params, ts.batch_stats, x, y, seed=args.seed,
                      batch_size=args.batch_size, checks=False, progress=False,
                      mesh=make_data_mesh(), **kw)
    rows[name] = (report, time.time() - t0 - compile_s[0], compile_s[0])
  print(f'{jax.device_count()} × {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'{args.dtype}, model '
        f'{args.workdir or f"{args.model} width {args.width}"}, n {len(x)}, eps Linf {eps:.5f}'
        f' L2 {args.eps_l2:g}, batch {args.batch_size}')
  print(f"{'suite':<21} {'run (s)':>9} {'points/s':>9} {'fwd/pt':>8} {'bwd/pt':>8} "
        f"{'clean':>6} {'robust':>7} {'compile (s)':>11} {'total (s)':>9}  robust after each "
        "attack (its wall time, compilation included)")
  for name, (report, wall, compiling) in rows.items():
    attacks = '  '.join(f"{a} {acc:.3f} ({report['time_by_attack_s'][a]:.1f} s)"
                        for a, acc in report['robust_accuracy_by_attack'].items())
    n = len(x)
    print(f"{name:<21} {wall:>9.1f} {n / wall:>9.2f} {report['forward_passes'] / n:>8.0f} "
          f"{report['backward_passes'] / n:>8.0f} {report['clean_accuracy']:>6.3f} "
          f"{report['robust_accuracy']:>7.3f} {compiling:>11.1f} {wall + compiling:>9.1f}  "
          f"{attacks}")
  for norm in norms:
    print(f"{norm}: AA-standard / PGD-{args.pgd_steps}-{args.pgd_restarts} run time: "
          f"{rows[f'aa_standard {norm}'][1] / rows[f'pgd {norm}'][1]:.2f}x")
  if len(norms) > 1:
    base = rows[f'pgd {norms[0]}'][1]
    print(f'run time relative to PGD-{args.pgd_steps}-{args.pgd_restarts} {norms[0]}: '
          + ', '.join(f'{name} {wall / base:.2f}x' for name, (_, wall, _) in rows.items()))
  reference = None
  if args.reference:
    reference = reference_autoattack(args, x, y, eps, model, ts)
  if reference:
    wall, robust, times, flags, _ = reference
    print(f"{'reference AA':<21} {wall:>9.1f} {len(x) / wall:>9.2f} {'':>8} {'':>8} {'':>6} "
          f"{robust:>7.3f} {'':>11} {wall:>9.1f}  cumulative: "
          + '  '.join(f'{a} {t:.1f} s' for a, t in times.items()))
    for name, (report, run_s, compiling) in rows.items():
      if name.startswith('aa_standard Linf'):
        agree = int(np.sum(np.asarray(report['flags']['robust']) == flags))
        print(f"{name}: reference time / fat_jax time {wall / (run_s + compiling):.2f}x with "
              f"compilation, {wall / run_s:.2f}x without (robust accuracy "
              f"{report['robust_accuracy']:.3f} vs {robust:.3f}; per-point robust flags agree "
              f"on {agree}/{len(flags)})")
  if args.json:
    write_json(args, x, eps, rows, reference)


def write_json(args, x, eps, rows, reference) -> None:
  """The table as JSON: per suite its settings, run time (compilation subtracted), points/s,
  passes per point, accuracies and per-attack times; the reference AutoAttack's when run."""
  n = len(x)
  out = {'devices': jax.device_count(), 'device_kind': jax.devices()[0].device_kind,
         'backend': jax.default_backend(), 'jax': jax.__version__, 'dtype': args.dtype,
         'conv': args.conv,
         'model': args.workdir or f'{args.model} width {args.width}', 'n': n, 'eps': eps,
         'batch_size': args.batch_size, 'suites': {
             name: {'settings': report['settings'], 'run_s': wall, 'compile_s': compiling,
                    'points_per_s': n / wall,
                    'forward_per_point': report['forward_passes'] / n,
                    'backward_per_point': report['backward_passes'] / n,
                    'clean_accuracy': report['clean_accuracy'],
                    'robust_accuracy': report['robust_accuracy'],
                    'robust_accuracy_by_attack': report['robust_accuracy_by_attack'],
                    'time_by_attack_s': report['time_by_attack_s']}
             for name, (report, wall, compiling) in rows.items()},
         'aa_over_pgd_run_time': {
             norm: rows[f'aa_standard {norm}'][1] / rows[f'pgd {norm}'][1]
             for norm in args.norm.split(',')}}
  if reference:
    wall, robust, times, flags, gap = reference
    out['reference_aa_standard'] = {
        'run_s': wall, 'points_per_s': n / wall, 'robust_accuracy': robust,
        'cumulative_s_by_attack': times, 'logits_max_abs_difference': gap,
        'robust_flags_agree': {
            name: int(np.sum(np.asarray(report['flags']['robust']) == flags))
            for name, (report, _, _) in rows.items() if name.startswith('aa_standard Linf')},
        'fat_jax_over_reference_points_per_s': {
            name: {'with_compilation': wall / (run_s + compiling), 'without': wall / run_s}
            for name, (_, run_s, compiling) in rows.items()
            if name.startswith('aa_standard Linf')}}
  with open(args.json, 'w', encoding='utf-8') as f:
    json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
