"""Every recipe config loads, resolves to a valid method, and matches the published tables."""
import glob
import importlib
import os

import pytest

from fat_jax.methods import resolve_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))
VARIANTS = {'lap': ('v', 'r', 'n'), 'aaer': ('rs', 'n')}


def configs_with_args():
  for name in CONFIGS:
    family = name.split('_')[0]
    for arg in VARIANTS.get(family, (None,)):
      yield name, arg


@pytest.mark.parametrize('name, arg', list(configs_with_args()))
def test_config_resolves(name, arg):
  module = importlib.import_module(f'configs.{name}')
  assert 'python launch.py --config=configs/' in module.__doc__ and 'Expected' in module.__doc__
  config = module.get_config(arg) if arg else module.get_config()
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
  assert n.data.name == 'cifar100' and (n.method.aaer_lambda2, n.method.aaer_lambda3) == (6.0, 0.5)
  assert not resolve_method(n.method, n.eps).attack.project
  with pytest.raises(ValueError, match='variant'):
    lap_eps8.get_config('rs_typo')
