"""Layers only point down: the import graph of fat_jax/**.py, read with `ast`, holds the walls
of docs/architecture.md.

`ALLOWED` places every module of fat_jax and names the fat_jax modules it may import; each
entry names only entries above it, so its order is the layer order, bottom to top, and
docs/architecture.md holds it as a table (`allowed_table`; ``python tests/test_layers.py``
prints it). The doc's rules hold for the imports and for the allow-list.

Every import statement counts, at module level or inside a function: a function-level import
runs as soon as the function does. A rule on a module holds for everything it reaches through
fat_jax imports, and a failure prints the chain of imports that breaks it.
"""
import ast
import functools
import itertools
import os
import re
import subprocess
import sys
import textwrap
from typing import NamedTuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, 'docs', 'architecture.md')

# Each module or package of fat_jax (names relative to `fat_jax`; a package's entry covers its
# submodules, which import each other freely; '__init__' is the root package alone) and the
# entries it may import, bottom to top: an entry names only entries above it. 'configs' is the
# recipes folder (installed as fat_jax.configs).
ALLOWED = {
    # Foundations.
    '__init__': (),
    'formats': (),
    'run': (),
    'analysis': (),
    'reports': (),
    'errors': (),
    'parallel': (),
    'formats.restricted_pickle': (),
    'evaluate.sanity': (),
    'analysis.diagnostics': (),
    'reports.figures': (),
    # The pure core, and what reads files from outside.
    'losses': (),
    'attacks': ('losses',),
    'weight_perturbation': (),
    'optim': (),
    'models': (),
    'data': ('formats.restricted_pickle',),
    'formats.torch_file': ('formats.restricted_pickle',),
    'validation': ('attacks',),
    # A run directory's files.
    'run.run_log': ('parallel',),
    'run.workdir_lock': ('parallel',),
    'run.divergence': ('parallel',),
    'run.tensorboard_log': ('parallel',),
    'run.checkpoint': ('optim', 'parallel', 'run.run_log'),
    # Methods and evaluation.
    'methods': ('attacks', 'data', 'errors', 'losses', 'optim', 'validation',
                'weight_perturbation'),
    'config': ('methods',),
    'recipes': ('config',),
    'run.run_config': ('config', 'run.run_log', 'validation'),
    'evaluate': ('attacks', 'data', 'evaluate.sanity', 'losses', 'parallel', 'run.run_log',
                 'validation'),
    'run.co_guard': ('methods', 'run.run_log'),
    # A run directory as one value.
    'run.runs': ('config', 'data', 'errors', 'evaluate', 'methods', 'models', 'optim', 'recipes',
                 'run.checkpoint', 'run.run_config', 'run.run_log'),
    # The evaluations of a checkpoint, conversion, the loop.
    'analysis.robustness': ('evaluate', 'methods', 'parallel', 'run.run_log', 'run.runs'),
    'analysis.noise_eval': ('attacks', 'evaluate', 'methods', 'run.run_log', 'run.runs'),
    'analysis.feature_analysis': ('attacks', 'losses', 'methods', 'run.run_log', 'run.runs'),
    'formats.convert': ('config', 'data', 'errors', 'formats.torch_file', 'methods', 'models',
                        'run.checkpoint', 'run.run_log'),
    'analysis.landscape': ('attacks', 'data', 'losses', 'methods', 'reports.figures',
                           'run.run_log', 'run.runs'),
    'analysis.shortcut_removal': ('config', 'evaluate', 'methods', 'parallel', 'reports.figures',
                                  'run.run_log', 'run.runs', 'weight_perturbation'),
    'run.train': ('analysis.diagnostics', 'analysis.robustness', 'config', 'data', 'evaluate',
                  'methods', 'models', 'optim', 'parallel', 'run.checkpoint', 'run.co_guard',
                  'run.divergence', 'run.run_config', 'run.run_log', 'run.runs',
                  'run.tensorboard_log', 'run.workdir_lock', 'validation'),
    # Evaluators of a run: launch's modes.
    'analysis.evaluators': ('analysis.feature_analysis', 'analysis.landscape',
                            'analysis.noise_eval', 'analysis.robustness',
                            'analysis.shortcut_removal', 'attacks',
                            'evaluate', 'methods', 'parallel', 'run.run_log', 'run.runs'),
    # Reports of finished runs.
    'reports.aggregate': ('analysis.diagnostics', 'reports.figures', 'run.run_log',
                          'run.runs'),
    'reports.summary': ('run.run_log', 'run.runs'),
    'reports.co_signals': ('analysis.diagnostics', 'reports.aggregate', 'reports.figures',
                           'run.run_log', 'run.runs'),
    'reports.report': ('analysis.evaluators', 'analysis.noise_eval', 'config', 'data', 'errors',
                       'parallel', 'reports.aggregate', 'reports.figures', 'reports.summary',
                       'run.run_log', 'run.runs', 'run.tensorboard_log'),
    # The launcher.
    'launch': ('analysis.evaluators', 'config', 'configs', 'errors', 'evaluate', 'parallel',
               'reports.report', 'reports.summary', 'run.run_config', 'run.runs', 'run.train',
               'validation'),
}
ROOT_ENTRY = '__init__'
# The wings: folders that group modules of several layers (docs/architecture.md). A wing's
# entry places its `__init__` alone; each of its modules has its own entry.
WINGS = ('formats', 'run', 'analysis', 'reports')
OUTSIDE = ('configs',)
PACKAGED_CONFIGS = 'fat_jax.configs'

PURE = ('fat_jax.attacks', 'fat_jax.losses', 'fat_jax.weight_perturbation', 'fat_jax.optim')
# What pure modules never import: the loop, data, models, configs, methods, evaluation, reports.
ABOVE_PURE = ('fat_jax.run', 'fat_jax.analysis', 'fat_jax.reports', 'fat_jax.data',
              'fat_jax.models', 'fat_jax.config', 'fat_jax.recipes', 'configs', 'fat_jax.methods',
              'fat_jax.evaluate')
MODELS_AND_DATA = ('fat_jax.models', 'fat_jax.data')
TRAINING_PIECES = ('fat_jax.attacks', 'fat_jax.losses', 'fat_jax.methods')
# The generic evaluation: a trained run is evaluated above it (`fat_jax.analysis.evaluators`).
NOT_IN_GENERIC_EVALUATE = ('fat_jax.models', 'fat_jax.methods', 'fat_jax.run.checkpoint',
                           'fat_jax.run.train', 'fat_jax.run.runs', 'fat_jax.reports',
                           'fat_jax.analysis.landscape')
LOOP = 'fat_jax.run.train'
NOT_IN_LOOP = ('fat_jax.reports.report', 'fat_jax.analysis.landscape')


def module_name(path: str, root: str) -> str:
  parts = os.path.relpath(path, root)[:-len('.py')].split(os.sep)
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def parse_modules(root: str) -> dict[str, tuple[str, ast.Module]]:
  """{module name: (path, syntax tree)} of every .py file under root/fat_jax."""
  modules = {}
  for directory, _, files in os.walk(os.path.join(root, 'fat_jax')):
    for f in sorted(files):
      if f.endswith('.py'):
        path = os.path.join(directory, f)
        with open(path) as fh:
          modules[module_name(path, root)] = (path, ast.parse(fh.read(), path))
  return modules


def import_statements(tree: ast.AST):
  for node in ast.iter_child_nodes(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    else:
      yield from import_statements(node)


def imported_modules(name: str, is_package: bool, tree: ast.Module, known) -> set[str]:
  """The project modules `name` imports (absolute or relative; `from package import
  submodule` is the submodule, `from module import object` the module; the installed recipes
  are 'configs'), at module level or inside functions."""
  out = set()
  for node in import_statements(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = name.split('.') if is_package else name.split('.')[:-1]
        base = base[:len(base) - node.level + 1]
        source = '.'.join(base + ([node.module] if node.module else []))
      else:
        source = node.module
      for a in node.names:
        full = f'{source}.{a.name}'
        out.add(full if full in known or full == PACKAGED_CONFIGS else source)
  out = {'configs' if within(m, (PACKAGED_CONFIGS,)) else m for m in out}
  return {m for m in out if m.split('.')[0] in ('fat_jax', 'configs')}


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
  """{module: the modules it imports}."""
  modules = parse_modules(root)
  return {name: imported_modules(name, path.endswith('__init__.py'), tree, modules)
          for name, (path, tree) in modules.items()}


def within(module: str, prefixes) -> bool:
  return any(module == p or module.startswith(p + '.') for p in prefixes)


def chains(graph, start: str):
  """(module, import chain from `start`) for every module `start` reaches."""
  seen, stack = {start: (start,)}, [start]
  while stack:
    current = stack.pop()
    for target in sorted(graph.get(current, ())):
      if target not in seen:
        seen[target] = seen[current] + (target,)
        stack.append(target)
  return [(m, chain) for m, chain in seen.items() if m != start]


def violations(graph, sources, forbidden, allowed=lambda module: False):
  """'a -> b -> c' for each module of `sources` that reaches one in `forbidden`."""
  found = []
  for module in sorted(graph):
    if within(module, sources) and not allowed(module):
      found += [' -> '.join(chain) for target, chain in chains(graph, module)
                if within(target, forbidden)]
  return found


def cycles(graph) -> list[list[str]]:
  """The strongly connected components with more than one module (or a self-import)."""
  index, low, on_stack, stack, found = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in graph.get(v, ()):
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def full_name(entry: str) -> str:
  return 'fat_jax' if entry == ROOT_ENTRY else entry if entry in OUTSIDE else f'fat_jax.{entry}'


def entry_of(module: str, allowed=ALLOWED):
  """The entry of `allowed` that places `module`: its own or its package's (the root's and a
  wing's entry place the package alone); None where none does."""
  names = [e for e in allowed if module == full_name(e)
           or (e not in (ROOT_ENTRY, *WINGS) and module.startswith(full_name(e) + '.'))]
  return max(names, key=len, default=None)


def unplaced(graph, allowed=ALLOWED) -> list[str]:
  return sorted(m for m in graph if entry_of(m, allowed) is None)


def unpermitted_imports(graph, allowed=ALLOWED) -> list[str]:
  """'a imports b' for each import of a placed module that its entry does not allow (within
  one entry, imports are free)."""
  found = []
  for module in sorted(graph):
    entry = entry_of(module, allowed)
    for target in sorted(graph[module]) if entry is not None else ():
      other = entry_of(target, allowed) or target  # 'configs', or a module no entry places
      if other != entry and other not in allowed[entry]:
        found.append(f'{module} imports {target}')
  return found


def misplaced_permissions(allowed=ALLOWED) -> list[str]:
  """'a -> b' for each `b` that entry `a` may import but that is no entry above `a`."""
  found, above = [], list(OUTSIDE)
  for entry, targets in allowed.items():
    found += [f'{entry} -> {t}' for t in targets if t not in above]
    above.append(entry)
  return found


def allowed_graph(allowed=ALLOWED) -> dict[str, set[str]]:
  """The allow-list as an import graph: each entry imports all it may."""
  return {full_name(e): {full_name(t) for t in targets} for e, targets in allowed.items()}


def allowed_table(allowed=ALLOWED) -> str:
  """The allow-list as docs/architecture.md shows it, bottom to top; consecutive entries that
  may import the same share a row."""
  def permitted(entry):
    return ', '.join(f'`{t}`' for t in allowed[entry]) or '—'
  rows = ['| module or package | may import |', '|---|---|']
  rows += [f"| {', '.join(f'`{e}`' for e in entries)} | {text} |"
           for text, entries in itertools.groupby(allowed, key=permitted)]
  return '\n'.join(rows) + '\n'


class Rule(NamedTuple):
  sources: tuple
  forbidden: tuple


RULES = {
    'pure modules import no loop, data, models, configs, methods, evaluation or reports':
        Rule(PURE, ABOVE_PURE),
    'losses import no attacks': Rule(('fat_jax.losses',), ('fat_jax.attacks',)),
    'models and data import no attacks, losses or methods': Rule(MODELS_AND_DATA,
                                                                 TRAINING_PIECES),
    'the generic evaluation imports no models, methods, checkpoints, loop or reports':
        Rule(('fat_jax.evaluate',), NOT_IN_GENERIC_EVALUATE),
    'the loop imports no report': Rule((LOOP,), NOT_IN_LOOP),
}


def broken(rule: Rule, graph) -> list[str]:
  return violations(graph, rule.sources, rule.forbidden)


@functools.lru_cache(maxsize=None)
def project_graph() -> dict[str, set[str]]:
  return import_graph()


@pytest.fixture(scope='module')
def graph():
  return project_graph()


@pytest.mark.parametrize('name', RULES)
def test_rule_holds_for_the_imports(name):
  rule = RULES[name]
  assert broken(rule, project_graph()) == []


@pytest.mark.parametrize('name', RULES)
def test_rule_holds_for_the_allow_list(name):
  assert broken(RULES[name], allowed_graph()) == []


def test_no_import_cycles(graph):
  assert cycles(graph) == []


def test_every_module_is_placed(graph):
  missing = unplaced(graph)
  assert not missing, (f'{missing}: no entry of ALLOWED in tests/test_layers.py places them. '
                       'Give each an entry in the lowest layer that can hold it (the fat_jax '
                       'modules it may import), then put the table `python tests/test_layers.py` '
                       'prints into docs/architecture.md.')


def test_modules_import_only_what_their_entry_allows(graph):
  found = unpermitted_imports(graph)
  assert not found, (f'{found}: not in ALLOWED (tests/test_layers.py). Move the shared piece '
                     'down, or allow the import where the layer order permits it.')


def test_entries_name_only_entries_above_them(graph):
  assert misplaced_permissions() == []
  assert [e for e in ALLOWED if not any(entry_of(m) == e for m in graph)] == []


def read_doc() -> str:
  with open(DOC, encoding='utf-8') as f:
    return f.read()


def test_the_architecture_doc_holds_the_allow_list():
  table = allowed_table()
  assert table in read_doc(), ('docs/architecture.md does not show the allow-list of '
                               f'tests/test_layers.py; its table reads:\n{table}')


def test_the_architecture_doc_names_every_module(graph):
  """The layout block names each module and package of fat_jax; the table of the evaluate
  package, each of its modules."""
  doc = read_doc()
  layout = doc.split('## Package layout', 1)[1].split('```')[1].split('fat_jax/\n', 1)[1]
  files = [f'{e}/' if os.path.isdir(os.path.join(ROOT, 'fat_jax', e)) else f'{e}.py'
           for e in ALLOWED if '.' not in e and e not in (ROOT_ENTRY, *OUTSIDE)]
  missing = [f for f in files if not re.search(rf'(?<![\w.]){re.escape(f)}', layout)]
  assert not missing, f'{missing}: not in the layout block of docs/architecture.md'
  evaluate = [m.split('.')[-1] for m in graph if m.startswith('fat_jax.evaluate.')]
  missing = [m for m in evaluate if f'| `{m}` |' not in doc]
  assert not missing, f'{missing}: not in the table of fat_jax.evaluate in docs/architecture.md'


def test_evaluate_loads_no_model_code():
  """``from fat_jax.evaluate import evaluate`` runs no model, method or checkpoint code."""
  code = textwrap.dedent('''
      import sys
      from fat_jax.evaluate import evaluate, PGDSettings
      print(sorted(m for m in sys.modules if m.startswith(('fat_jax.models', 'fat_jax.methods',
                                                          'fat_jax.run.checkpoint',
                                                          'fat_jax.run.runs'))))
  ''')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env={**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'},
                       cwd=ROOT).stdout.split('\n')
  assert out[0] == '[]'


def test_the_walker_sees_relative_function_level_and_submodule_imports(tmp_path):
  """The rules above can fail: a tiny package with each kind of import, and a cycle."""
  files = {
      'fat_jax/__init__.py': '',
      'fat_jax/losses/__init__.py': 'from .gradalign import g\n',
      'fat_jax/losses/gradalign.py': 'def g():\n  from fat_jax.attacks import core\n',
      'fat_jax/attacks/__init__.py': '',
      'fat_jax/attacks/core.py': 'import fat_jax.losses.gradalign\n',
      'fat_jax/models/__init__.py': 'from fat_jax.models import small\n',
      'fat_jax/models/small.py': 'from fat_jax.models import x\n',
      'fat_jax/evaluate.py': 'import fat_jax.data\ndef f():\n  import fat_jax.models\n',
      'fat_jax/launch.py': 'from fat_jax import configs\n',
  }
  for path, text in files.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
  g = import_graph(str(tmp_path))
  assert g['fat_jax.losses'] == {'fat_jax.losses.gradalign'}
  assert g['fat_jax.losses.gradalign'] == {'fat_jax.attacks.core'}
  assert g['fat_jax.models.small'] == {'fat_jax.models'}
  assert g['fat_jax.evaluate'] == {'fat_jax.data', 'fat_jax.models'}
  assert g['fat_jax.launch'] == {'configs'}  # the recipes, installed as fat_jax.configs
  assert violations(g, ('fat_jax.losses',), ('fat_jax.attacks',)) == [
      'fat_jax.losses -> fat_jax.losses.gradalign -> fat_jax.attacks.core',
      'fat_jax.losses.gradalign -> fat_jax.attacks.core']
  assert sorted(cycles(g)) == [['fat_jax.attacks.core', 'fat_jax.losses.gradalign'],
                               ['fat_jax.models', 'fat_jax.models.small']]


def test_the_allow_list_checks_can_fail():
  """A module no entry places, imports an entry does not allow, an entry naming one below it."""
  allowed = {'__init__': (), 'losses': (), 'attacks': ('losses',),
             'run.train': ('attacks', 'evaluate'), 'evaluate': ('attacks',)}
  graph = {'fat_jax': set(), 'fat_jax.losses': {'fat_jax.losses.kl'},
           'fat_jax.losses.kl': {'fat_jax.attacks.pgd'}, 'fat_jax.attacks.pgd': {'fat_jax.losses'},
           'fat_jax.run.train': {'fat_jax.attacks.pgd', 'configs'},
           'fat_jax.evaluate': {'fat_jax.run.train'},
           'fat_jax.reports.report': {'fat_jax.evaluate'}}
  assert [entry_of(m, allowed) for m in sorted(graph)] == [
      '__init__', 'attacks', 'evaluate', 'losses', 'losses', None, 'run.train']
  assert unplaced(graph, allowed) == ['fat_jax.reports.report']
  assert unpermitted_imports(graph, allowed) == [
      'fat_jax.evaluate imports fat_jax.run.train', 'fat_jax.losses.kl imports fat_jax.attacks.pgd',
      'fat_jax.run.train imports configs']
  assert misplaced_permissions(allowed) == ['run.train -> evaluate']
  assert broken(Rule(('fat_jax.losses',), ('fat_jax.attacks',)), allowed_graph(allowed)) == []
  assert broken(Rule(('fat_jax.run.train',), ('fat_jax.losses',)), allowed_graph(allowed)) == [
      'fat_jax.run.train -> fat_jax.attacks -> fat_jax.losses']
  assert allowed_table(allowed) == (
      '| module or package | may import |\n|---|---|\n| `__init__`, `losses` | — |\n'
      '| `attacks` | `losses` |\n| `run.train` | `attacks`, `evaluate` |\n'
      '| `evaluate` | `attacks` |\n')


if __name__ == '__main__':
  print(allowed_table(), end='')


def test_the_flat_paths_of_earlier_releases_load_the_wing_modules():
  """`fat_jax.MOVED`: an old path imports the module of its wing (one object), and runs as
  ``python -m``."""
  import importlib
  import fat_jax
  for old, new in fat_jax.MOVED.items():
    assert old.rpartition('.')[2] == new.rpartition('.')[2]
    assert importlib.import_module(old) is importlib.import_module(new)
  out = subprocess.run([sys.executable, '-m', 'fat_jax.aggregate', '--help'], capture_output=True,
                       text=True, env={**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'},
                       cwd=ROOT)
  assert out.returncode == 0 and 'usage' in out.stdout, out.stderr
