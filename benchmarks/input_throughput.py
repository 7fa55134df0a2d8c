"""Images/s of the streaming input path alone next to the training step's, on one machine.

Writes a folder of random JPEGs in Tiny-ImageNet's layout (64×64) or ImageNet-100's
(500×375, cropped to 224 on the host), reads it with the grain pipeline (decode and host
transform, `workers` processes) for `batches` batches, timed from the first batch on (without
the workers' start-up; up to (READ_THREADS + PREFETCH) × (workers or 1) batches read during
the start-up count too, so use many more batches than that) and from the start, then times
FGSM-RS training steps of PreActResNet-18 on batches of that shape; prints the rates and
their ratio (input / step: below 1, the loader starves the device).

  python benchmarks/input_throughput.py --layout=tiny --batch-size=128 --workers=8
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from fat_jax import optim
from fat_jax.data import load_data, train_batches
from fat_jax.methods import init_train_state, make_train_step, resolve_method
from fat_jax.models import build_model
from fat_jax.config import default_config
from fat_jax.parallel import make_data_mesh, replicate

LAYOUTS = {'tiny': ('tiny_imagenet', (64, 64)), 'imagenet': ('imagenet100', (375, 500))}


def write_folder(root: str, layout: str, n: int) -> None:
  """`n` random JPEGs in two classes, in the layout's folders."""
  rng = np.random.default_rng(0)
  shape = LAYOUTS[layout][1]
  wnids = ('n01000001', 'n01000002')
  if layout == 'tiny':
    base = os.path.join(root, 'tiny-imagenet-200')
    os.makedirs(os.path.join(base, 'val', 'images'))
    with open(os.path.join(base, 'wnids.txt'), 'w') as f:
      f.write('\n'.join(wnids))
    folder = lambda w, split: os.path.join(base, split, w, 'images')
    with open(os.path.join(base, 'val', 'val_annotations.txt'), 'w') as f:
      f.write(f'v.JPEG\t{wnids[0]}\n')
    Image.fromarray(rng.integers(0, 256, (*shape, 3), np.uint8)).save(
        os.path.join(base, 'val', 'images', 'v.JPEG'))
  else:
    with open(os.path.join(root, 'wnids.txt'), 'w') as f:
      f.write('\n'.join(wnids))
    folder = lambda w, split: os.path.join(root, split, w)
  for i in range(n):
    for split in ('train',) if i >= 2 else ('train', 'val'):  # one val image per class
      path = folder(wnids[i % 2], split)
      os.makedirs(path, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (*shape, 3), np.uint8)).save(
          os.path.join(path, f'{i}.JPEG'), quality=90)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--layout', choices=sorted(LAYOUTS), default='tiny')
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--batches', type=int, default=8)
  parser.add_argument('--workers', type=int, default=0)
  parser.add_argument('--width', type=int, default=64)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  name = LAYOUTS[args.layout][0]
  with tempfile.TemporaryDirectory() as root:
    write_folder(root, args.layout, args.batch_size * args.batches)
    c = default_config()
    c.data.name, c.data.dir, c.data.workers = name, root, args.workers
    data = load_data(c.data)
    mesh = make_data_mesh()
    batches = train_batches(data, batch_size=args.batch_size, seed=0, num_epochs=1, mesh=mesh)
    start = time.perf_counter()
    it = batches.epoch(1)
    first = next(it)  # worker start-up and the first batch are not timed
    t0 = time.perf_counter()
    for batch in it:
      jax.block_until_ready(batch)
    end = time.perf_counter()
    input_rate = (args.batches - 1) * args.batch_size / (end - t0)
    startup_rate = args.batches * args.batch_size / (end - start)

  c.model.width = args.width
  model = build_model(c.model, data.info)
  steps = args.steps
  schedule = optim.Schedule(kind='cyclic', lr_max=0.2, total_steps=steps + 1,
                            steps_per_epoch=steps + 1)
  step = jax.jit(make_train_step(model, resolve_method(c.method, c.eps), schedule,
                                 weight_decay=5e-4, augment_mode=data.info.augment,
                                 key=jax.random.key(1)), donate_argnums=0)
  ts = replicate(init_train_state(model, jax.random.key(0)), mesh)
  ts, _ = step(ts, *first)  # compilation
  jax.block_until_ready(ts)
  t0 = time.perf_counter()
  for _ in range(steps):
    ts, metrics = step(ts, *first)
  jax.block_until_ready(metrics)
  step_rate = steps * args.batch_size / (time.perf_counter() - t0)
  result = {'layout': args.layout, 'batch_size': args.batch_size, 'workers': args.workers,
            'width': args.width, 'devices': jax.device_count(),
            'device_kind': jax.devices()[0].device_kind, 'backend': jax.default_backend(),
            'jax': jax.__version__, 'input_images_per_s': input_rate,
            'input_with_startup_images_per_s': startup_rate,
            'step_images_per_s': step_rate, 'input_over_step': input_rate / step_rate}
  starves = ' (the loader starves the device)' if input_rate < step_rate else ''
  print(f"{args.layout}: input path {input_rate:.0f} images/s ({startup_rate:.0f} with the "
        f"start-up; {args.batches} batches of {args.batch_size}, {args.workers} workers), "
        f"FGSM-RS step {step_rate:.0f} images/s on {result['device_kind']}: ratio "
        f"{input_rate / step_rate:.2f}{starves}")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
