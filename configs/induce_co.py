"""Inducing catastrophic overfitting with L_co (Zhao et al., ECCV 2024, Eq. 9).

FGSM-MEP's attack, loss and recipe (configs/fgsm_mep.py) plus L_co (the paper's "supplemental
constraint"): L_co = CE(f(x + δ; C_p masked), y) − L_stable(C_p), C_p the top p% channels of
node B by T_act on the training set, read from the T_act file of a checkpoint (`--mode=analyze`
writes WORKDIR/tact.npz); L_stable(C_p) at Eq. 8's scale (α3 = 200, N = channels). Eq. 9 as
written by default; `method.co.saturation` = a > 0 bounds each channel's term by tanh(a·D)/a
(a labelled deviation, fat_jax.losses.feature_diff.co_loss). The argument is
`<data>_eps<E>_p<P>` (default cifar10_eps8_p10), p ∈ {1, 3, 10, 20} in the paper.

Inputs: un-normalised [0, 1] pixels (`model.normalize = False`), as the official ResNet-18 of
`jiaxiaojunQAQ/FGSM-PGI`. Deliberate deviation (docs/deviations.md): fat_jax keeps the
per-example prior P and momentum on the padded canvas of the augmentation, so they follow each
epoch's crop and flip; the official code stores P in the frame of the cropped, flipped batch it
was computed on and adds it unchanged to the next epoch's differently augmented image.

  python launch.py --config=configs/fd.py:cifar10_eps8_mep --workdir=runs/mep_eps8 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py
  python launch.py --config=configs/fd.py:cifar10_eps8_mep --workdir=runs/mep_eps8 --mode=analyze
  python launch.py --config=configs/induce_co.py:cifar10_eps8_p10 --workdir=runs/co_eps8_p10 \\
      --config.data.dir=PATH_WITH_cifar-10-batches-py \\
      --config.method.co.tact_file=runs/mep_eps8/tact.npz

Expected (paper): p = 10% induces catastrophic overfitting (PGD accuracy collapses while
clean accuracy stays high), and the CO model evaluated with input noise U(−16/255, 16/255)
keeps high clean accuracy (`--mode=noise_eval`: also check the adaptive EOT row).
"""
from fat_jax.recipes import induce_co_config, parse_fd_arg


def get_config(arg: str = 'cifar10_eps8_p10'):
  fields = parse_fd_arg(arg)
  if set(fields) - {'data', 'eps', 'percent'}:
    raise ValueError(f'{arg!r}: expected <data>_eps<E>_p<percent>.')
  return induce_co_config(fields['eps'], fields['data'], fields.get('percent', 10.0))
