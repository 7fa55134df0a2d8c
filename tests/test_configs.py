"""Every recipe config loads, resolves to a valid method, and matches the published tables."""
import glob
import importlib
import os

import numpy as np
import pytest

from fat_jax.methods import resolve_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Training recipes; configs/from_workdir.py reads a run's config.json (tests/test_convert.py).
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if os.path.basename(p) not in ('__init__.py', 'from_workdir.py'))
VARIANTS = {'lap': ('v', 'r', 'n'), 'aaer': ('rs', 'n'),
            'fd': ('cifar10_eps12_a200', 'cifar100_eps16_a1000', 'cifar10_eps8_mep'),
            'induce': ('cifar10_eps8_p10', 'cifar100_eps16_p3')}


def configs_with_args():
  for name in CONFIGS:
    family = name.split('_')[0]
    for arg in VARIANTS.get(family, (None,)):
      yield name, arg


@pytest.mark.parametrize('name, arg', list(configs_with_args()))
def test_config_resolves(name, arg, tmp_path):
  module = importlib.import_module(f'configs.{name}')
  assert 'python launch.py --config=configs/' in module.__doc__ and 'Expected' in module.__doc__
  config = module.get_config(arg) if arg else module.get_config()
  if config.method.name == 'induce_co':  # its channels come from the T_act file of a checkpoint
    np.savez(tmp_path / 'tact.npz', B=np.linspace(0, 1, 64))
    config.method.co.tact_file = str(tmp_path / 'tact.npz')
  method = resolve_method(config.method, config.eps)
  if name.startswith('lap'):
    assert method.lap is not None and method.lap.gamma == 0.3
  if name.startswith('aaer'):
    assert method.aaer is not None


def test_recipe_values_follow_the_readmes():
  from configs import aaer_cifar100_eps16, lap_eps12, lap_eps8
  v = resolve_method(lap_eps8.get_config('v').method, 8 / 255)
  assert (v.lap.beta, v.attack.init, v.attack.alpha, v.attack.project) == (0.03, 'zero', 8 / 255, True)
  r = resolve_method(lap_eps12.get_config('r').method, 12 / 255)
  assert r.lap.beta == 0.03 and r.attack.alpha == pytest.approx(1.25 * 12 / 255)
  n = aaer_cifar100_eps16.get_config('n')
  assert n.data.name == 'cifar100' and (n.method.aaer.lambda2, n.method.aaer.lambda3) == (6.0, 0.5)
  assert not resolve_method(n.method, n.eps).attack.project
  with pytest.raises(ValueError, match='variant'):
    lap_eps8.get_config('rs_typo')


def test_feature_difference_recipes():
  from configs import fd, fgsm_mep
  mep = fgsm_mep.get_config()   # jiaxiaojunQAQ/FGSM-PGI FGSM_MEP.py defaults
  assert (mep.model.name, mep.num_epochs, mep.optim.schedule, mep.optim.lr_max) == (
      'resnet18', 110, 'multistep', 0.1)
  assert tuple(mep.optim.milestones) == (100, 105) and mep.method.mep.reset_every == 40
  method = resolve_method(mep.method, mep.eps)
  assert method.attack.alpha == method.attack.eps == 8 / 255 and method.stable is None
  assert fgsm_mep.get_config('cifar100').method.mep.reset_every == 10
  c = fd.get_config('cifar100_eps14_a400')
  method = resolve_method(c.method, c.eps)
  assert (c.data.name, c.eps, c.eval.eps) == ('cifar100', 14 / 255, 16 / 255)
  assert method.stable.alpha3 == 400.0 and method.mep is not None
  assert resolve_method(fd.get_config('cifar10_eps12_mep').method, 12 / 255).stable is None
  with pytest.raises(ValueError, match='data'):
    fd.get_config('svhn_eps8')


def test_official_networks_schedules_and_evaluations():
  from configs import fd, fgsm_mep, gradalign_eps8, gradalign_eps16, induce_co, lap_eps8, lap_eps32
  # FGSM-MEP, FD, L_co: the official ResNet-18 reads un-normalised [0, 1] inputs.
  for c in (fgsm_mep.get_config(), fd.get_config(), induce_co.get_config()):
    assert c.model.name == 'resnet18' and c.model.normalize is False
  # GradAlign: its own schedule and PreActResNet-18 (tml-epfl/understanding-fast-adv-training).
  for c in (gradalign_eps8.get_config(), gradalign_eps16.get_config()):
    assert (c.optim.schedule, c.optim.lr_max, c.optim.momentum) == ('piecewise_linear', 0.3, 0.9)
    assert (c.model.name, c.model.normalize, c.model.init, c.model.head_bn_relu) == (
        'preact_resnet18', False, 'he_normal', False)
  # LAP's official CIFAR-10 evaluation: PGD-50 with 1 restart.
  for c in (lap_eps8.get_config('n'), lap_eps32.get_config('v')):
    assert (c.eval.pgd_steps, c.eval.pgd_restarts) == (50, 1)


def test_aaer_wrn_recipes_change_only_the_network():
  """`AAER.py --model WideResNet` (CIFAR10/ and CIFAR100/ of tmllab/2023_NeurIPS_AAER): the
  PreActResNet-18 recipe with `WideResNet(34, num_classes, 10)`."""
  import jax
  from configs import aaer_cifar100_eps8, aaer_cifar100_wrn_eps8, aaer_eps8, aaer_wrn_eps8
  from fat_jax.data import DATASET_INFOS
  from fat_jax.models import build_model
  for wrn, reference in ((aaer_wrn_eps8, aaer_eps8), (aaer_cifar100_wrn_eps8, aaer_cifar100_eps8)):
    for variant in ('rs', 'n'):
      c, ref = wrn.get_config(variant), reference.get_config(variant)
      assert (c.model.name, c.model.depth, c.model.widen_factor) == ('wide_resnet', 34, 10)
      c.model = ref.model
      assert c == ref
  c = aaer_cifar100_wrn_eps8.get_config('rs')
  assert (c.data.name, c.eps, c.method.aaer.lambda1, c.method.aaer.lambda2,
          c.method.aaer.lambda3) == ('cifar100', 8 / 255, 1.0, 3.5, 1.5)
  assert resolve_method(c.method, c.eps).aaer is not None
  model = build_model(c.model, DATASET_INFOS['cifar100'])
  params = jax.eval_shape(model.init, jax.random.key(0))[0]
  # WRN-34-10's 46,160,474 parameters at 10 classes, plus 90 more rows of the 640-input fc.
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) == 46_160_474 + 90 * 641


def test_lap_cifar100_recipe_is_the_cifar10_recipe_on_cifar100():
  """`CIFAR100/LAP.py` of tmllab/2024_ICML_LAP: the CIFAR-10 script's arguments with
  `PreActResNet18(num_classes=100)` and PGD-50 with 1 restart."""
  from configs import lap_cifar100_eps8, lap_eps8
  for variant in ('v', 'r', 'n'):
    c, ref = lap_cifar100_eps8.get_config(variant), lap_eps8.get_config(variant)
    assert (c.data.name, c.eval.pgd_steps, c.eval.pgd_restarts) == ('cifar100', 50, 1)
    c.data.name = 'cifar10'
    assert c == ref
  n = resolve_method(lap_cifar100_eps8.get_config().method, 8 / 255)
  assert (n.lap.beta, n.lap.gamma, n.attack.init_scale, n.attack.project) == (0.001, 0.3, 2.0,
                                                                              False)
