"""AAER (NeurIPS 2023) on ImageNet-100 at ε = 8/255, with the defaults of the official
``tmllab/2023_NeurIPS_AAER`` ``Imagenet-100/AAER.py``: 30 epochs, batch 128, cyclic lr 0.2,
N start (U(−2ε, 2ε), α = ε, clamp 0), λ1 = 1.0, λ2 = 4.0, λ3 = 1.5. Data:
``RandomResizedCrop(224)`` + flip for training, ``Resize(256)`` + ``CenterCrop(224)`` for test,
ImageNet μ/σ (``Imagenet-100/utils.py``), streamed with grain (``pip install
'fat_jax[stream]'``). Final evaluation PGD-50-10 (the official one updates only the examples
still classified correctly). The network is fat_jax's ResNet-18 ('resnet18'); the official
``Imagenet-100/preact_resnet.py`` ``resnet18`` differs (max-pool after the stem,
L2-normalised features, a bias-free classifier).

Get ImageNet (ILSVRC2012), sort its val images into class folders (train/<wnid>/*.JPEG,
val/<wnid>/*.JPEG); the 100 classes are those of a wnids.txt in that folder (AAER's layout),
else the ImageNet-100 list of HobbitLong/CMC imagenet100.txt. Then

  python launch.py --config=configs/aaer_imagenet100.py --workdir=runs/aaer_imagenet100 \\
      --config.data.dir=PATH_WITH_train_AND_val --config.data.workers=16

Expected: no catastrophic overfitting (no run of it has been measured here).
"""
from fat_jax.recipes import aaer_config


def get_config(variant: str = 'n'):
  c = aaer_config(8, variant, 'cifar10')
  c.data.name, c.data.pipeline = 'imagenet100', 'stream'
  c.model.name = 'resnet18'
  c.method.aaer.lambda1, c.method.aaer.lambda2, c.method.aaer.lambda3 = 1.0, 4.0, 1.5
  c.eval.pgd_restarts = 10
  return c
