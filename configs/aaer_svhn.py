"""AAER (NeurIPS 2023) on SVHN at ε = 8/255, with the defaults of the official
``tmllab/2023_NeurIPS_AAER`` ``SVHN/AAER.py`` (fat_jax.recipes.aaer_svhn_config): PreActResNet-18,
15 epochs, batch 128, cyclic lr 0 → 0.05 → 0 peaking at 2/5 of the iterations (torch
``CyclicLR(step_size_up=2T/5, step_size_down=3T/5)``), N start (U(−2ε, 2ε), α = ε, clamp 0;
variant argument rs: U(−ε, ε), α = 1.25ε, clamp 1, same λ) with the attack step scaled by
min((epoch + i/steps)/5, 1), λ1 = 1.0, λ2 = 4.0, λ3 = 1.5. Data: ``RandomCrop(32, padding=4)`` +
flip on the device, SVHN's μ/σ as ``SVHN/utils.py``. Final evaluation PGD-50-10 on the whole
test set. The warm-up reads i/steps over the epoch's full batches (the official loop counts
the last, partial batch too).

Download http://ufldl.stanford.edu/housenumbers/train_32x32.mat and test_32x32.mat into a
folder (needs scipy), then

  python launch.py --config=configs/aaer_svhn.py --workdir=runs/aaer_svhn \\
      --config.data.dir=PATH_WITH_train_32x32.mat

Expected: no catastrophic overfitting (no run of it has been measured here).
"""
from fat_jax.recipes import aaer_svhn_config


def get_config(variant: str = 'n'):
  return aaer_svhn_config(variant)
