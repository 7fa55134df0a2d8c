"""FD: FGSM-MEP + L_stable (Zhao et al., ECCV 2024, "Catastrophic Overfitting: A Potential
Blessing in Disguise"), the paper's settings.

The FGSM-MEP recipe (configs/fgsm_mep.py: ResNet-18, 110 epochs, multistep lr 0.1) plus
L_stable = α3/(N·H·W) Σ_k ‖M_B,k(x + δ) − M_B,k(x + δ0)‖² at node B (Eq. 8, N = channels:
α3 × the mean squared difference over channels and positions), evaluated at ε = 16/255. The
argument is `<data>_eps<E>[_a<α3>|_mep]` (default cifar10_eps12_a200): data cifar10 |
cifar100, ε_train = E/255 with E ∈ {8, 10, 12, 14, 16} in the paper, α3 ∈ {100, 200, 300,
400, 1000} (200 in all its main runs); `_mep` is the FGSM-MEP baseline of the same setting.

Inputs: un-normalised [0, 1] pixels (`model.normalize = False`), as the official ResNet-18 of
`jiaxiaojunQAQ/FGSM-PGI`. Deliberate deviation (docs/deviations.md): fat_jax keeps the
per-example prior P and momentum on the padded canvas of the augmentation, so they follow each
epoch's crop and flip; the official code stores P in the frame of the cropped, flipped batch it
was computed on and adds it unchanged to the next epoch's differently augmented image.

  python launch.py --config=configs/fd.py:cifar10_eps12_a200 --workdir=runs/fd_eps12 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py
  python launch.py --config=configs/fd.py:cifar10_eps12_mep --workdir=runs/mep_eps12 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py
  python launch.py --config=configs/fd.py --workdir=runs/fd_eps12 --mode=analyze
  python launch.py --config=configs/fd.py --workdir=runs/fd_eps12 --mode=noise_eval \\
      --config.eval.input_noise=0.0627

Expected (paper Table 2, CIFAR-10, ε_train = 12/255, evaluated at 16/255, no noise):
FD (α3 = 200) clean 74.08 / PGD-50 29.65 / AA 19.72; FGSM-MEP 74.71 / 35.52 / 27.23.
"""
from fat_jax.recipes import FD_EVAL_EPS, fd_config, mep_config, parse_fd_arg


def get_config(arg: str = 'cifar10_eps12_a200'):
  fields = parse_fd_arg(arg)
  if 'percent' in fields:
    raise ValueError(f'{arg!r}: p<percent> belongs to configs/induce_co.py.')
  if fields.get('mep'):
    config = mep_config(fields['eps'], fields['data'])
    config.eval.eps = FD_EVAL_EPS / 255
    return config
  return fd_config(fields['eps'], fields['data'], fields.get('alpha3', 200.0))
