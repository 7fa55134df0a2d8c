"""AAER (NeurIPS 2023) on Tiny-ImageNet-200 at ε = 8/255, with the defaults of the official
``tmllab/2023_NeurIPS_AAER`` ``Tiny-imagenet/AAER.py``: PreActResNet-18 with 200 classes, 30
epochs, batch 128, cyclic lr 0.2, N start (U(−2ε, 2ε), α = ε, clamp 0), λ1 = 1.0, λ2 = 4.0,
λ3 = 1.5 (variant argument rs or n as configs/aaer_eps8.py, same λ). Data: 64×64,
``RandomCrop(64, padding=8)`` + flip on the host, CIFAR-100's μ/σ as its ``utils.py``; streamed
with grain (``pip install 'fat_jax[stream]'``). Final evaluation PGD-50-10 as the official script.

Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and extract it, then

  python launch.py --config=configs/aaer_tiny_imagenet.py --workdir=runs/aaer_tiny_imagenet \\
      --config.data.dir=PATH_WITH_tiny-imagenet-200 --config.data.workers=8

Expected: no catastrophic overfitting (no run of it has been measured here).
"""
from fat_jax.recipes import aaer_config


def get_config(variant: str = 'n'):
  c = aaer_config(8, variant, 'cifar10')
  c.data.name, c.data.pipeline = 'tiny_imagenet', 'stream'
  c.method.aaer.lambda1, c.method.aaer.lambda2, c.method.aaer.lambda3 = 1.0, 4.0, 1.5
  c.eval.pgd_restarts = 10
  return c
