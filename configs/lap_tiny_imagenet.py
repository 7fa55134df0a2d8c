"""LAP (ICML 2024) on Tiny-ImageNet-200 at ε = 8/255, with the arguments of the official
``tmllab/2024_ICML_LAP`` ``Tiny-imagenet/LAP.py``: PreActResNet-18 with 200 classes, 30 epochs,
batch 128, cyclic lr 0.2, 21 perturbed layers; variant argument v, r or n (default n, its N
start: U(−2ε, 2ε), α = ε, no clamp) with β and γ = 0.3 of the README's ε = 8 commands, as
configs/lap_eps8.py (the README has none for Tiny-ImageNet; ``LAP.py``'s argparse defaults are
β = 0.01, γ = 1.0: --config.method.lap.beta=0.01 --config.method.lap.gamma=1.0). Data: 64×64,
``RandomCrop(64, padding=8)`` + flip on the host, CIFAR-100's μ/σ as ``Tiny-imagenet/utils.py``;
streamed with grain (``pip install 'fat_jax[stream]'``). Final evaluation PGD-50-10 as the
official script.

Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and extract it, then

  python launch.py --config=configs/lap_tiny_imagenet.py:n --workdir=runs/lap_tiny_imagenet \\
      --config.data.dir=PATH_WITH_tiny-imagenet-200 --config.data.workers=8

Expected: no catastrophic overfitting (no run of it has been measured here).
"""
from fat_jax.recipes import lap_config


def get_config(variant: str = 'n'):
  c = lap_config(8, variant)
  c.data.name, c.data.pipeline = 'tiny_imagenet', 'stream'
  c.eval.pgd_restarts = 10
  return c
