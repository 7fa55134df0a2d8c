"""fat_jax: fast adversarial training and catastrophic overfitting in JAX.

The modules live in wings (docs/architecture.md); `MOVED` keeps the flat import paths of
earlier releases working: ``import fat_jax.train`` or ``python -m fat_jax.aggregate`` load the
module at its place in its wing, as one module object under both names.
"""
import importlib
import importlib.abc
import importlib.util
import sys

__version__ = '0.1.0'

MOVED = {
    **{f'fat_jax.{m}': f'fat_jax.formats.{m}' for m in ('restricted_pickle', 'torch_file',
                                                        'convert')},
    **{f'fat_jax.{m}': f'fat_jax.run.{m}' for m in (
        'run_log', 'workdir_lock', 'divergence', 'tensorboard_log', 'checkpoint', 'run_config',
        'co_guard', 'runs', 'train')},
    **{f'fat_jax.{m}': f'fat_jax.analysis.{m}' for m in (
        'diagnostics', 'noise_eval', 'feature_analysis', 'landscape', 'shortcut_removal',
        'evaluators')},
    **{f'fat_jax.{m}': f'fat_jax.reports.{m}' for m in ('figures', 'aggregate', 'summary',
                                                        'report')},
    'fat_jax.sanity': 'fat_jax.evaluate.sanity',
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Finds an old name of `MOVED` and loads it as the module at its new place."""

  def find_spec(self, name, path=None, target=None):
    if name not in MOVED:
      return None
    origin = importlib.util.find_spec(MOVED[name]).origin  # runpy's sys.argv[0]
    return importlib.util.spec_from_loader(name, self, origin=origin)

  def create_module(self, spec):
    return importlib.import_module(MOVED[spec.name])

  def exec_module(self, module):
    pass

  def get_code(self, name):  # runpy (`python -m` an old name)
    return importlib.util.find_spec(MOVED[name]).loader.get_code(MOVED[name])


if not any(isinstance(f, _Alias) for f in sys.meta_path):
  sys.meta_path.append(_Alias())
