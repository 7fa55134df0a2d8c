"""A new user's first hour: `--help` lists the recipes, `--mode=print_config` shows a recipe's
fields and writes nothing, a missing recipe names the list, every printed hint names the
launcher's command where the user is (`fat_jax.errors.command_name`), requirements.txt pins
versions within pyproject.toml's bounds, and building the wheel leaves the clone clean.

``python tests/test_first_hour.py > requirements.txt`` writes the lock from the environment it
runs in (`lock`).
"""
import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib

import ml_collections
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fat_jax import errors

from fat_jax.config import default_config
from fat_jax.formats import convert
from fat_jax.methods import resolve_method
from fat_jax.run.runs import Run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [sys.executable, os.path.join(ROOT, 'launch.py')]
REQUIREMENTS = os.path.join(ROOT, 'requirements.txt')
LOCK_HEADER = """\
# The exact versions the test suite passed with (Linux x86-64, Python 3.11, CPU): pyproject.toml's
# dependencies and its `test` extra, with everything they pull in. For that exact set, in a clone:
#   pip install -r requirements.txt && pip install --no-deps -e .
# Written by: python tests/test_first_hour.py > requirements.txt"""


def pyproject() -> dict:
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


def direct_requirements() -> list[Requirement]:
  """pyproject's dependencies and its `test` extra: what requirements.txt locks."""
  project = pyproject()
  names = project['dependencies'] + project['optional-dependencies']['test']
  return [Requirement(r) for r in names]


def lock() -> str:
  """requirements.txt for the installed environment: `name==version` of each distribution that
  `direct_requirements` reach (markers evaluated here, extras followed), sorted."""
  found, stack = {}, [(r, '') for r in direct_requirements()]
  while stack:
    requirement, extra = stack.pop()
    if requirement.marker and not requirement.marker.evaluate({'extra': extra}):
      continue
    name = canonicalize_name(requirement.name)
    dist = importlib.metadata.distribution(requirement.name)
    extras = found.setdefault(name, (dist.metadata['Name'], dist.version, set()))[2]
    new = ({''} | set(requirement.extras)) - extras
    extras.update(new)
    stack += [(Requirement(r), e) for e in new for r in dist.requires or ()]
  return '\n'.join([LOCK_HEADER] + [f'{n}=={v}' for n, v, _ in sorted(found.values(),
                                                                      key=lambda t: t[0].lower())])


def pins() -> dict[str, tuple[str, str]]:
  """{canonical name: (name, version)} of requirements.txt's ``name==version`` lines."""
  out = {}
  with open(REQUIREMENTS) as f:
    for line in f:
      line = line.split('#')[0].strip()
      if line:
        name, sep, version = line.partition('==')
        assert sep and name.strip() and version.strip(), line
        assert canonicalize_name(name) not in out, f'{name} pinned twice'
        out[canonicalize_name(name)] = (name.strip(), version.strip())
  return out


def launch(*args, cwd):
  return subprocess.run(LAUNCH + list(args), cwd=cwd, capture_output=True, text=True,
                        timeout=120, check=False)


def test_help_lists_every_recipe_and_how_to_print_its_fields(tmp_path):
  result = launch('--help', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  recipes = sorted(f for f in os.listdir(os.path.join(ROOT, 'configs'))
                   if f.endswith('.py') and not f.startswith('_'))
  lines = result.stdout.splitlines()
  for name in recipes:
    assert any(line.startswith(f'  {name}') for line in lines), name
  assert '  quickstart.py[:method]  (method default: fgsm)' in lines
  assert '  from_workdir.py:workdir' in lines
  # absl wraps the list of modes onto the line after the flag's name.
  assert '<train|eval|robustness|noise_eval|analyze|shortcuts|examples|print_config>' in ' '.join(
      result.stdout.split())
  command = f'python {os.path.join(ROOT, "launch.py")}'  # as typed, from another folder
  assert f'  {command} --config=configs/NAME.py[:ARG] --mode=print_config' in lines
  assert f'  {command} --config=configs/quickstart.py --workdir=/tmp/quickstart' in lines
  assert os.listdir(tmp_path) == []


def test_print_config_prints_the_fields_with_overrides_and_writes_nothing(tmp_path):
  result = launch('--config=configs/quickstart.py:n_fgsm', '--mode=print_config',
                  '--config.num_epochs=2', '--config.eval.pgd_steps=3', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert 'num_epochs = 2' in lines and 'eval.pgd_steps = 3' in lines
  assert "data.name = 'fashion_mnist'" in lines
  assert all(' = ' in line for line in lines)
  assert os.listdir(tmp_path) == []


def test_other_modes_still_need_a_workdir(tmp_path):
  result = launch('--config=configs/quickstart.py', cwd=tmp_path)
  assert result.returncode == 1 and result.stdout == ''
  first = result.stderr.splitlines()[0]
  assert first.startswith('fat_jax: error:') and '--workdir is required' in first


def test_a_missing_recipe_names_the_nearest_else_the_list(tmp_path):
  # From a folder without configs/: the nearest of the recipes shipped, else where they are listed.
  near = launch('--config=configs/quickstar.py', '--workdir=run', cwd=tmp_path)
  far = launch('--config=configs/nothing_like_it.py', '--workdir=run', cwd=tmp_path)
  assert near.returncode == far.returncode == 1
  assert near.stderr.splitlines()[0] == ('fat_jax: error: --config=configs/quickstar.py: no such '
                                         'file. Did you mean configs/quickstart.py?')
  assert far.stderr.splitlines()[0] == (
      'fat_jax: error: --config=configs/nothing_like_it.py: no such file '
      f'(python {os.path.join(ROOT, "launch.py")} --help lists the recipes)')
  assert os.listdir(tmp_path) == []


def test_config_fields_are_the_override_names():
  from fat_jax.launch import config_fields  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({'a': 1, 'b': {'c': 'x', 'd': (1, 2)}, 'e': {}})
  assert config_fields(config) == ['a = 1', "b.c = 'x'", 'b.d = (1, 2)', 'e = {}']


@pytest.mark.parametrize('program, on_path, launch_here, expected', [
    ('launch.py', False, True, 'python launch.py'),
    ('/somewhere/else/launch.py', True, False, 'python /somewhere/else/launch.py'),
    (os.path.join(ROOT, 'fat_jax', 'launch.py'), True, False, 'python -m fat_jax.launch'),
    ('/venv/bin/fat-jax-convert', True, False, 'fat-jax-train'),
    ('/venv/bin/fat-jax-report', False, False, '/venv/bin/fat-jax-train'),
    ('/usr/bin/pytest', True, True, 'fat-jax-train'),
    ('/usr/bin/pytest', False, True, 'python launch.py'),
    ('/usr/bin/pytest', False, False, 'python -m fat_jax.launch'),
])
def test_command_name(program, on_path, launch_here, expected, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  if launch_here:
    (tmp_path / 'launch.py').write_text('')
  monkeypatch.setattr(shutil, 'which', lambda name: f'/bin/{name}' if on_path else None)
  assert errors.command_name(program) == expected


def test_hints_name_the_command_where_the_user_is(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['/opt/env/bin/fat-jax-report'])
  monkeypatch.setattr(shutil, 'which', lambda name: None)
  command = '/opt/env/bin/fat-jax-train'
  method = default_config().method
  method.name, method.co.tact_file = 'induce_co', ''
  assert convert.evaluate_command('W').startswith(f'{command} --config=configs/from_workdir.py:W')
  with pytest.raises(FileNotFoundError, match=f'{command} --mode=train'):
    Run(str(tmp_path), 'none', default_config()).restore()
  with pytest.raises(ValueError, match=f'{command} --mode=analyze'):
    resolve_method(method, 8 / 255)


def test_no_hint_string_hard_codes_the_checkout_command():
  """`python launch.py` only in docstrings and comments: the strings printed use the helper."""
  found = []
  for folder, _, files in os.walk(os.path.join(ROOT, 'fat_jax')):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(folder, f)
        with open(path) as fh:
          tree = ast.parse(fh.read(), path)
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
                      and n.body and isinstance(n.body[0], ast.Expr)}
        found += [f'{path}:{n.lineno}' for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  and 'python launch.py' in n.value and id(n) not in docstrings]
  assert not found


def test_requirements_pin_every_direct_dependency_within_pyproject_bounds():
  pinned = pins()
  for requirement in direct_requirements():
    name = canonicalize_name(requirement.name)
    assert name in pinned, f'{requirement.name} is not pinned in requirements.txt'
    assert requirement.specifier.contains(pinned[name][1], prereleases=True), (
        f'{pinned[name]} is outside pyproject.toml\'s {requirement}')
  for extra in ('cuda12', 'cuda13', 'tpu'):  # jax's builds: the same bounds as jax itself
    for requirement in map(Requirement, pyproject()['optional-dependencies'][extra]):
      assert requirement.specifier.contains(pinned[canonicalize_name(requirement.name)][1])


def test_requirements_header_says_how_to_use_and_rewrite_it():
  with open(REQUIREMENTS) as f:
    assert f.read().startswith(LOCK_HEADER + '\n')


@pytest.mark.slow  # builds the wheel from a copy of the clone (pip fetches setuptools: ~10 s)
def test_building_the_wheel_leaves_only_ignored_files(tmp_path):
  src = tmp_path / 'src'
  files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split('\n')
  for f in filter(None, files):
    if os.path.isfile(os.path.join(ROOT, f)):
      os.makedirs(src / os.path.dirname(f), exist_ok=True)
      shutil.copy2(os.path.join(ROOT, f), src / f)
  subprocess.run(['git', 'init', '-q'], cwd=src, check=True)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '-w',
                  str(tmp_path / 'wheel'), str(src)], check=True, timeout=300)
  status = subprocess.run(['git', 'status', '--porcelain'], cwd=src, check=True,
                          capture_output=True, text=True).stdout.split('\n')
  tracked_before = {f'?? {f.split("/")[0]}' + ('/' if '/' in f else '') for f in files if f}
  assert [s for s in status if s and s not in tracked_before] == []


if __name__ == '__main__':
  print(lock())
