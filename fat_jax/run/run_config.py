"""A checkpoint is evaluated with the config it was trained with.

`launch.py --mode=eval|analyze|noise_eval` rebuilds the model from the config it is given;
`check_against_run` compares that config with the run's ``config.json`` (the model, the data
set, the method label and the training ε, which is the default evaluation ε) and refuses
any contradiction, listing each differing field with both values. Where the data live
(``data.dir``, ``data.source``) and how many examples are loaded (``data.n_train``,
``data.n_test``: e.g. the whole test set for a final evaluation) may differ.
"""
from __future__ import annotations

import json
import logging

from fat_jax.config import default_config, upgrade
from fat_jax.run import run_log
from fat_jax.validation import ConfigError

log = logging.getLogger('fat_jax')

RUN_FIELDS = ('model', 'data', 'method.name', 'eps')
FREE_FIELDS = ('data.dir', 'data.source', 'data.n_train', 'data.n_test')


def _flat(tree, prefix: str = '') -> dict:
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f'{prefix}{key}.'))
  return out


def _run_fields(config: dict) -> dict:
  """The dotted `RUN_FIELDS` of a JSON config, `FREE_FIELDS` excepted."""
  flat = _flat(config)
  return {k: v for k, v in flat.items() if k not in FREE_FIELDS and any(
      k == f or k.startswith(f + '.') for f in RUN_FIELDS)}


def contradictions(config, stored: dict) -> list[str]:
  """'field: value here, value in the run' for each run field of `config` (a ConfigDict)
  that differs from `stored` (a run's config.json); a field the stored config lacks (added
  to fat_jax after the run) counts at its default value."""
  current = _run_fields(json.loads(config.to_json_best_effort()))
  default = _run_fields(json.loads(default_config().to_json_best_effort()))
  run = {**default, **_run_fields(stored)}
  return [f'{k} = {current.get(k)!r} here, {run.get(k)!r} in the run'
          for k in sorted(set(current) | set(run)) if current.get(k) != run.get(k)]


def read_stored(workdir: str) -> dict | None:
  """The config.json of the run in `workdir` (None if it has none), the method fields of
  earlier releases in their sections (`config.upgrade`)."""
  stored = run_log.read_json(workdir, run_log.CONFIG)
  return None if stored is None else upgrade(stored)


def check_against_run(config, workdir: str) -> None:
  """Raise `ConfigError` when `config` contradicts the run in `workdir` (see the module)."""
  stored = read_stored(workdir)
  if stored is None:
    log.warning('%s has no %s: the model is built from the given config, unchecked.', workdir,
                run_log.CONFIG)
    return
  differ = contradictions(config, stored)
  if differ:
    raise ConfigError(f'The config contradicts the run in {workdir} ({run_log.CONFIG}):\n  '
                      + '\n  '.join(differ) + '\nPass the recipe the run was trained with '
                      'and drop these overrides.')
