"""FGSM-MEP (Jia et al., ECCV 2022, "Prior-Guided Adversarial Initialization for Fast
Adversarial Training") with the defaults of `jiaxiaojunQAQ/FGSM-PGI FGSM_MEP.py`.

ResNet-18 on [0, 1] inputs, ε = α = 8/255, per-example prior perturbation and momentum kept
across epochs (reset every 40 epochs on CIFAR-10, 10 on CIFAR-100, as FGSM_MEP_cifar100.py),
label smoothing 0.6, logit pairing λ = 10, 110 epochs, multistep lr 0.1 (× 0.1 after epochs
100 and 105), batch 128. The argument picks the data set (default cifar10).

Inputs: un-normalised [0, 1] pixels (`model.normalize = False`), as the official ResNet-18 of
`jiaxiaojunQAQ/FGSM-PGI`. Deliberate deviation (docs/deviations.md): fat_jax keeps the
per-example prior P and momentum on the padded canvas of the augmentation, so they follow each
epoch's crop and flip; the official code stores P in the frame of the cropped, flipped batch it
was computed on and adds it unchanged to the next epoch's differently augmented image.

  python launch.py --config=configs/fgsm_mep.py --workdir=runs/fgsm_mep \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py
  python launch.py --config=configs/fgsm_mep.py:cifar100 --workdir=runs/fgsm_mep_c100 \\
      --config.data.dir=PATH_WITH_cifar-100-python

Expected: no catastrophic overfitting. The official code keeps the checkpoint with the best
test PGD-10 accuracy; fat_jax evaluates the last epoch (`co_monitor.early_stop` keeps the
last good one if CO occurs). At ε = 12/255, evaluated at 16/255, the feature-difference paper
reports FGSM-MEP clean 74.71 / PGD-50 35.52 / AA 27.23 (configs/fd.py:cifar10_eps12_mep).
"""
from fat_jax.recipes import mep_config


def get_config(data: str = 'cifar10'):
  return mep_config(8, data)
