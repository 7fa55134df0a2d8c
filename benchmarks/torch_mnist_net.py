"""A PyTorch MNIST net (locuslab/fast_adversarial MNIST/mnist_net.py) trained with FGSM-RS.

  python benchmarks/torch_mnist_net.py --out=runs/torch_mnist_net.pth     # Fashion-MNIST, ε 0.1
  OMP_NUM_THREADS=1 python benchmarks/torch_mnist_net.py --dataset=mnist --data-dir=DIR \
      --eps=0.3 --epochs=25 --lr-peak=0.4 --pgd-steps=50 --out=runs/mnist5k_eps03.pth
      # ε 0.3 on benchmarks/mnist5k.py's 4000 digits (one thread: shared cores slow PyTorch's)

The model that `benchmarks/eval_throughput.py --torch-file` evaluates with fat_jax's
AutoAttack and the reference AutoAttack side by side (it needs a model trained elsewhere, in
PyTorch, as most of the models users evaluate are). The training follows
`locuslab/fast_adversarial MNIST/train_mnist.py` (FGSM with a uniform random start,
α = 1.25 ε, Adam with a triangular learning rate 0 → 5e-3 → 0 peaking at ``--lr-peak`` of the
run (train_mnist.py: 2/5; default here 1/2), batch 100, inputs in [0, 1] without
normalisation); ``--attack=pgd`` trains with its PGD instead (``--pgd-train-steps`` steps of
``--alpha``, uniform start). ``--pgd-steps`` > 0 reports the PGD accuracy of
``locuslab/fast_adversarial MNIST/evaluate_mnist.py`` (step 0.01, ``--pgd-restarts``
restarts) on the test images. The data set is read by fat_jax's loader (numpy, no download).
Writes ``model.state_dict()`` with ``torch.save``; convert it with
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


def pgd_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
               steps: int, restarts: int) -> torch.Tensor:
  """Per point, whether no restart of L∞ PGD fools the model (evaluate_mnist.py's attack_pgd):
  δ ~ U(−ε, ε), then δ ← clip_[−ε,ε](δ + α sign ∇_δ CE) with x + δ kept in [0, 1], a point
  counting as fooled once any iterate misclassifies it (attack_pgd stops updating it there)."""
  with torch.no_grad():
    robust = model(x).argmax(1) == y
  for _ in range(restarts):
    delta = (torch.rand_like(x) * 2 - 1) * eps
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
      out = model(x + delta)
      robust &= out.argmax(1) == y
      grad, = torch.autograd.grad(nn.functional.cross_entropy(out, y, reduction='sum'), delta)
      delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
      delta = ((x + delta).clamp(0, 1) - x).detach().requires_grad_(True)
    with torch.no_grad():
      robust &= model(x + delta).argmax(1) == y
  return robust


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--dataset', default='fashion_mnist', help='fashion_mnist | mnist')
  p.add_argument('--data-dir', default='', help="the loader's directory (default: its own)")
  p.add_argument('--eps', type=float, default=0.1)
  p.add_argument('--epochs', type=int, default=3)
  p.add_argument('--lr-peak', type=float, default=0.5,
                 help="where the learning rate peaks, a fraction of the run (train_mnist.py: 0.4)")
  p.add_argument('--attack', default='fgsm', help='fgsm (uniform start, α = 1.25 ε) | pgd')
  p.add_argument('--alpha', type=float, default=0.0, help='the step (default: 1.25 ε for fgsm)')
  p.add_argument('--pgd-train-steps', type=int, default=40, help="--attack=pgd's steps")
  p.add_argument('--pgd-steps', type=int, default=0, help='PGD steps of the test (0: none)')
  p.add_argument('--pgd-restarts', type=int, default=10)
  p.add_argument('--n-test', type=int, default=1000, help='the first n test images')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', required=True, help='the torch.save file to write')
  args = p.parse_args()
  if args.attack not in ('fgsm', 'pgd') or not 0 < args.lr_peak < 1:
    raise SystemExit(f'--attack must be fgsm or pgd and --lr-peak in (0, 1), got '
                     f'{args.attack!r}, {args.lr_peak}')
  torch.manual_seed(args.seed)
  data = load_dataset(ml_collections.ConfigDict(dict(name=args.dataset, dir=args.data_dir)))
  x_train, y_train = nchw(data.train_images), torch.from_numpy(data.train_labels.astype(np.int64))
  model = mnist_net(data.info.num_classes)
  opt = torch.optim.Adam(model.parameters(), lr=5e-3)
  batch, alpha = 100, args.alpha or 1.25 * args.eps
  if args.attack == 'pgd' and not args.alpha:
    raise SystemExit('--attack=pgd needs --alpha')
  steps = args.epochs * (len(x_train) // batch)
  sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps,
                                              pct_start=args.lr_peak, anneal_strategy='linear',
                                              cycle_momentum=False, div_factor=1e6,
                                              final_div_factor=1.0)
  loss_fn = nn.CrossEntropyLoss()
  for epoch in range(args.epochs):
    t0, order, total, correct = time.time(), torch.randperm(len(x_train)), 0.0, 0
    for i in range(len(x_train) // batch):
      idx = order[i * batch:(i + 1) * batch]
      x, y = x_train[idx], y_train[idx]
      delta = ((torch.rand_like(x) * 2 - 1) * args.eps).requires_grad_(True)
      if args.attack == 'pgd':
        delta = ((x + delta).clamp(0, 1) - x).detach().requires_grad_(True)
      for _ in range(args.pgd_train_steps if args.attack == 'pgd' else 1):
        grad, = torch.autograd.grad(loss_fn(model(x + delta), y), delta)
        delta = (delta + alpha * grad.sign()).clamp(-args.eps, args.eps)
        delta = ((x + delta).clamp(0, 1) - x).detach().requires_grad_(True)
      delta = delta.detach()
      out = model(x + delta)
      loss = loss_fn(out, y)
      opt.zero_grad()
      loss.backward()
      opt.step()
      sched.step()
      total += loss.item() * batch
      correct += (out.argmax(1) == y).sum().item()
    print(f'epoch {epoch}: {args.attack.upper()} train loss {total / (i + 1) / batch:.4f}, '
          f'acc {correct / (i + 1) / batch:.4f} ({time.time() - t0:.0f} s)')
  n = args.n_test
  x_test = nchw(data.test_images[:n])
  y_test = torch.from_numpy(data.test_labels[:n].astype(np.int64))
  with torch.no_grad():
    acc = (model(x_test).argmax(1) == y_test).float().mean().item()
  print(f'clean accuracy on the first {len(x_test)} test images: {acc:.3f}')
  if args.pgd_steps:
    robust = pgd_robust(model, x_test, y_test, args.eps, 0.01, args.pgd_steps, args.pgd_restarts)
    print(f'PGD-{args.pgd_steps}-{args.pgd_restarts} (step 0.01) accuracy at ε {args.eps}: '
          f'{robust.float().mean().item():.3f}')
  torch.save(model.state_dict(), args.out)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
