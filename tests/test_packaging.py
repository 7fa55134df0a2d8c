"""The package as installed: its package list, the console entry points, the recipes it
ships (--config=configs/NAME.py from any folder), the launcher's compilation cache folder,
TFDS only on demand, and CITATION.cff.

The end-to-end check (a fresh venv, `pip install .`, the console commands on the quickstart
config) is scripts/check_install.sh, run by .ci/run."""
import importlib
import os
import subprocess
import sys
import tomllib

import yaml

import fat_jax
from fat_jax import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pyproject() -> dict:
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)


def test_package_list_names_every_package_and_ships_the_configs():
  setuptools = pyproject()['tool']['setuptools']
  on_disk = {os.path.relpath(folder, ROOT).replace(os.sep, '.')
             for folder, _, files in os.walk(os.path.join(ROOT, 'fat_jax'))
             if '__init__.py' in files}
  assert set(setuptools['packages']) == on_disk | {'fat_jax.configs'}
  assert setuptools['package-dir'] == {'fat_jax.configs': 'configs'}
  assert os.path.isfile(os.path.join(ROOT, 'configs', '__init__.py'))


def test_entry_points_name_callables():
  scripts = pyproject()['project']['scripts']
  assert scripts['fat-jax-train'] == 'fat_jax.launch:run'
  for name, target in scripts.items():
    module, _, attr = target.partition(':')
    if module == 'fat_jax.formats.convert' and importlib.util.find_spec(module) is None:
      continue  # written on another branch; the entry point is declared ahead of it
    assert callable(getattr(importlib.import_module(module), attr)), name


def test_version_and_licence_agree():
  project = pyproject()['project']
  with open(os.path.join(ROOT, 'CITATION.cff')) as f:
    citation = yaml.safe_load(f)
  assert project['version'] == fat_jax.__version__ == citation['version']
  assert project['license'] == citation['license'] == 'Apache-2.0'
  with open(os.path.join(ROOT, 'LICENSE')) as f:
    assert 'Apache License' in f.read(200)


def test_citation_cff_has_the_required_keys_and_the_method_papers():
  with open(os.path.join(ROOT, 'CITATION.cff')) as f:
    citation = yaml.safe_load(f)
  assert citation['cff-version'] == '1.2.0'
  for key in ('message', 'title', 'authors'):
    assert citation[key], key
  titles = []
  for ref in citation['references']:
    assert ref['type'] and ref['title'] and ref['authors'] and isinstance(ref['year'], int), ref
    assert all(a.get('family-names') or a.get('name') for a in ref['authors']), ref['title']
    titles.append(ref['title'])
  for words in ('Fast is better than free', 'Make Some Noise', 'Fast Adversarial Training',
                'Pseudo-Robust Shortcut', 'Abnormal Adversarial Examples',
                'Potential Blessing in Disguise', 'Prior-Guided Adversarial Initialization',
                'Resistant to Adversarial Attacks', 'Trade-off between Robustness and Accuracy',
                'Revisiting Misclassified Examples', 'Adversarial Weight Perturbation',
                'Reliable evaluation of adversarial robustness'):
    assert any(words in t for t in titles), words


def test_config_paths_fall_back_to_the_packaged_recipes(tmp_path, monkeypatch):
  # Installed, fat_jax.configs is the repository's configs/ folder (package-dir above).
  monkeypatch.setitem(sys.modules, 'fat_jax.configs', importlib.import_module('configs'))
  packaged = os.path.join(ROOT, 'configs', 'quickstart.py')
  monkeypatch.chdir(tmp_path)
  assert launch.resolve_config_path('configs/quickstart.py:n_fgsm') == packaged + ':n_fgsm'
  assert launch.resolve_config_path('./configs/quickstart.py') == packaged
  assert launch.resolve_config_args(['x', '--config', 'configs/quickstart.py', '--workdir=w']) \
      == ['x', '--config', packaged, '--workdir=w']
  for unchanged in ('configs/no_such_recipe.py', 'my/quickstart.py:fgsm'):
    assert launch.resolve_config_path(unchanged) == unchanged
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'quickstart.py').write_text('')
  assert launch.resolve_config_path('configs/quickstart.py') == 'configs/quickstart.py'


def test_compilation_cache_folder(tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  assert launch.compilation_cache_dir('auto', 'gpu') == str(tmp_path / 'xdg' / 'fat_jax' / 'xla')
  assert launch.compilation_cache_dir('auto', 'cpu', cpu_loads=False) == ''
  assert launch.compilation_cache_dir('auto', 'cpu', cpu_loads=True) == str(
      tmp_path / 'xdg' / 'fat_jax' / 'xla')
  assert launch.compilation_cache_dir('~/c', 'cpu') == os.path.expanduser('~/c')
  assert launch.compilation_cache_dir('', 'tpu') == ''
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'env'))
  for platform in ('cpu', 'gpu'):
    assert launch.compilation_cache_dir('auto', platform) == str(tmp_path / 'env')
  # '' switches off the cache that JAX's own environment variable would have used.
  code = ('import jax; from fat_jax.launch import use_compilation_cache; '
          "print(jax.config.jax_enable_compilation_cache, end=' '); "
          "use_compilation_cache('', 'cpu'); print(jax.config.jax_enable_compilation_cache)")
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, capture_output=True,
                       text=True, env={**os.environ, 'PYTHONPATH': ROOT})
  assert out.stdout.split() == ['True', 'False']


def test_training_and_reporting_do_not_import_tfds():
  code = ('import sys, fat_jax.launch, fat_jax.reports.report, fat_jax.reports.aggregate; '
          "print('tensorflow_datasets' in sys.modules)")
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, capture_output=True,
                       text=True, env={**os.environ, 'PYTHONPATH': ROOT})
  assert out.stdout.strip() == 'False'
