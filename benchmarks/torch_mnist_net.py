"""A PyTorch MNIST net (locuslab/fast_adversarial MNIST/mnist_net.py) trained with FGSM-RS.

  python benchmarks/torch_mnist_net.py --out=runs/torch_mnist_net.pth     # Fashion-MNIST, ε 0.1
  python benchmarks/torch_mnist_net.py --dataset=mnist --eps=0.3 --epochs=10 --out=wong.pth

The model that `benchmarks/eval_throughput.py --torch-file` evaluates with fat_jax's
AutoAttack and the reference AutoAttack side by side (it needs a model trained elsewhere, in
PyTorch, as most of the models users evaluate are). The training follows
`locuslab/fast_adversarial MNIST/train_mnist.py` (FGSM with a uniform random start,
α = 1.25 ε, Adam with a triangular learning rate peaking at 5e-3 half-way, batch 100, inputs
in [0, 1] without normalisation); the data set is read by fat_jax's loader (numpy, no
download). Writes ``model.state_dict()`` with ``torch.save``; convert it with
``fat-jax-convert FILE --source=locuslab_mnist --dataset=fashion_mnist --eps=0.1``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import ml_collections
import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fat_jax.data import load_dataset  # noqa: E402
from torch_models import mnist_net  # noqa: E402


def nchw(images: np.ndarray) -> torch.Tensor:
  """uint8 NHWC images → float32 NCHW in [0, 1]."""
  return torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--dataset', default='fashion_mnist', help='fashion_mnist | mnist')
  p.add_argument('--data-dir', default='', help="the loader's directory (default: its own)")
  p.add_argument('--eps', type=float, default=0.1)
  p.add_argument('--epochs', type=int, default=3)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', required=True, help='the torch.save file to write')
  args = p.parse_args()
  torch.manual_seed(args.seed)
  data = load_dataset(ml_collections.ConfigDict(dict(name=args.dataset, dir=args.data_dir)))
  x_train, y_train = nchw(data.train_images), torch.from_numpy(data.train_labels.astype(np.int64))
  model = mnist_net(data.info.num_classes)
  opt = torch.optim.Adam(model.parameters(), lr=5e-3)
  batch, alpha = 100, 1.25 * args.eps
  steps = args.epochs * (len(x_train) // batch)
  sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps,
                                              pct_start=0.5, anneal_strategy='linear',
                                              cycle_momentum=False, div_factor=1e6,
                                              final_div_factor=1.0)
  loss_fn = nn.CrossEntropyLoss()
  for epoch in range(args.epochs):
    t0, order, total, correct = time.time(), torch.randperm(len(x_train)), 0.0, 0
    for i in range(len(x_train) // batch):
      idx = order[i * batch:(i + 1) * batch]
      x, y = x_train[idx], y_train[idx]
      delta = ((torch.rand_like(x) * 2 - 1) * args.eps).requires_grad_(True)
      grad, = torch.autograd.grad(loss_fn(model(x + delta), y), delta)
      delta = (delta + alpha * grad.sign()).clamp(-args.eps, args.eps)
      delta = ((x + delta).clamp(0, 1) - x).detach()
      out = model(x + delta)
      loss = loss_fn(out, y)
      opt.zero_grad()
      loss.backward()
      opt.step()
      sched.step()
      total += loss.item() * batch
      correct += (out.argmax(1) == y).sum().item()
    print(f'epoch {epoch}: FGSM-RS train loss {total / (i + 1) / batch:.4f}, '
          f'acc {correct / (i + 1) / batch:.4f} ({time.time() - t0:.0f} s)')
  with torch.no_grad():
    x_test = nchw(data.test_images[:1000])
    acc = (model(x_test).argmax(1).numpy() == data.test_labels[:1000]).mean()
  print(f'clean accuracy on the first 1000 test images: {acc:.3f}')
  torch.save(model.state_dict(), args.out)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
