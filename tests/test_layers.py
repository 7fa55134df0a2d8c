"""Layers only point down: the import graph of fat_jax/**.py, read with `ast`, holds the walls
of docs/architecture.md.

Every import statement counts, at module level or inside a function: a function-level import
runs as soon as the function does. A rule on a module holds for everything it reaches through
fat_jax imports, and a failure prints the chain of imports that breaks it.
"""
import ast
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PURE = ('fat_jax.attacks', 'fat_jax.losses', 'fat_jax.weight_perturbation', 'fat_jax.optim')
# What pure modules never import: the loop, data, models, configs, methods, evaluation, reports.
ABOVE_PURE = ('fat_jax.train', 'fat_jax.data', 'fat_jax.models', 'fat_jax.config',
              'fat_jax.recipes', 'configs', 'fat_jax.methods', 'fat_jax.evaluate',
              'fat_jax.checkpoint', 'fat_jax.report', 'fat_jax.landscape', 'fat_jax.aggregate',
              'fat_jax.summary', 'fat_jax.run_log', 'fat_jax.feature_analysis',
              'fat_jax.noise_eval', 'fat_jax.diagnostics')
MODELS_AND_DATA = ('fat_jax.models', 'fat_jax.data')
TRAINING_PIECES = ('fat_jax.attacks', 'fat_jax.losses', 'fat_jax.methods')
# The generic evaluation: everything of the package but its checkpoint module, which the package
# facade loads on first use of its names (see test_evaluate_loads_no_model_code).
EVALUATE_CHECKPOINTS = 'fat_jax.evaluate.checkpoints'
NOT_IN_GENERIC_EVALUATE = ('fat_jax.models', 'fat_jax.methods', 'fat_jax.checkpoint',
                           'fat_jax.train', 'fat_jax.report', 'fat_jax.landscape')
LOOP = 'fat_jax.train'
NOT_IN_LOOP = ('fat_jax.report', 'fat_jax.landscape')


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


def import_statements(tree: ast.AST, module_level_only: bool):
  for node in ast.iter_child_nodes(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    elif not (module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
      yield from import_statements(node, module_level_only)


def imported_modules(name: str, is_package: bool, tree: ast.Module, known,
                     module_level_only: bool = False) -> set[str]:
  """The project modules `name` imports (absolute or relative; `from package import
  submodule` is the submodule, `from module import object` the module), anywhere or only
  outside functions."""
  out = set()
  for node in import_statements(tree, module_level_only):
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
        out.add(full if full in known else source)
  return {m for m in out if m.split('.')[0] in ('fat_jax', 'configs')}


def import_graph(root: str = ROOT, lazy=()) -> dict[str, set[str]]:
  """{module: the modules it imports}; for the modules in `lazy`, only their imports outside
  functions (a facade that loads some names on first use)."""
  modules = parse_modules(root)
  return {name: imported_modules(name, path.endswith('__init__.py'), tree, modules,
                                 module_level_only=name in lazy)
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


@pytest.fixture(scope='module')
def graph():
  return import_graph()


def test_pure_modules_import_no_loop_data_models_configs_methods_evaluation_or_reports(graph):
  assert violations(graph, PURE, ABOVE_PURE) == []


def test_losses_import_no_attacks(graph):
  assert violations(graph, ('fat_jax.losses',), ('fat_jax.attacks',)) == []


def test_models_and_data_import_no_attacks_losses_or_methods(graph):
  assert violations(graph, MODELS_AND_DATA, TRAINING_PIECES) == []


def test_generic_evaluate_imports_no_models_methods_or_checkpoints():
  facade_loads_checkpoints_lazily = import_graph(lazy=('fat_jax.evaluate',))
  assert violations(facade_loads_checkpoints_lazily, ('fat_jax.evaluate',),
                    NOT_IN_GENERIC_EVALUATE, allowed=lambda m: m == EVALUATE_CHECKPOINTS) == []


def test_loop_imports_no_report(graph):
  assert violations(graph, (LOOP,), NOT_IN_LOOP) == []


def test_no_import_cycles(graph):
  assert cycles(graph) == []


def test_evaluate_loads_no_model_code():
  """``from fat_jax.evaluate import evaluate`` runs no model, method or checkpoint code; the
  checkpoint names still import from the package, on first use."""
  code = textwrap.dedent('''
      import sys
      from fat_jax.evaluate import evaluate, PGDSettings
      print(sorted(m for m in sys.modules if m.startswith(('fat_jax.models', 'fat_jax.methods',
                                                          'fat_jax.checkpoint'))))
      from fat_jax.evaluate import restore_model
      print('fat_jax.models' in sys.modules)
  ''')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env={**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'},
                       cwd=ROOT).stdout.split('\n')
  assert out[:2] == ['[]', 'True']


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
  }
  for path, text in files.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
  g = import_graph(str(tmp_path))
  assert g['fat_jax.losses'] == {'fat_jax.losses.gradalign'}
  assert g['fat_jax.losses.gradalign'] == {'fat_jax.attacks.core'}
  assert g['fat_jax.models.small'] == {'fat_jax.models'}
  assert g['fat_jax.evaluate'] == {'fat_jax.data', 'fat_jax.models'}
  assert import_graph(str(tmp_path), lazy=('fat_jax.evaluate',))['fat_jax.evaluate'] == {
      'fat_jax.data'}
  assert violations(g, ('fat_jax.losses',), ('fat_jax.attacks',)) == [
      'fat_jax.losses -> fat_jax.losses.gradalign -> fat_jax.attacks.core',
      'fat_jax.losses.gradalign -> fat_jax.attacks.core']
  assert sorted(cycles(g)) == [['fat_jax.attacks.core', 'fat_jax.losses.gradalign'],
                               ['fat_jax.models', 'fat_jax.models.small']]
