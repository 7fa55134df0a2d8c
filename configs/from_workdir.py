"""The config stored in a run directory: its ``config.json`` over the default config.

For ``--mode=eval`` (or analyze, noise_eval) of a run without its recipe file, in
particular of a model converted from PyTorch (``python -m fat_jax.formats.convert``,
docs/convert.md):

  python launch.py --config=configs/from_workdir.py:runs/wong2020 --workdir=runs/wong2020 \\
      --mode=eval --config.eval.suite=aa_standard --config.data.dir=/data/cifar10

Fields of the stored config that the default config lacks (``converted_from``, or
fields removed since the run was written) are left out; ``--config.<field>``
overrides apply on top as with any recipe.
"""
from fat_jax.config import default_config
from fat_jax.run import run_config, run_log


def _overlay(config, stored: dict) -> None:
  for key, value in stored.items():
    if key not in config:
      continue
    if isinstance(value, dict) and hasattr(config[key], 'items'):
      _overlay(config[key], value)
    else:
      config[key] = value


def get_config(workdir: str):
  stored = run_config.read_stored(workdir)
  if stored is None:
    raise FileNotFoundError(f'No {run_log.CONFIG} in {workdir!r}: pass a run directory '
                            '(configs/from_workdir.py:WORKDIR) written by training or by '
                            'python -m fat_jax.formats.convert.')
  config = default_config()
  _overlay(config, stored)
  return config
