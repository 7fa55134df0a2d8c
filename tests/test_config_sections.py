"""The method's component sections (`config.section`), generated from the role values, and the
reading of config.json files written with the earlier flat method fields (`config.upgrade`)."""
import dataclasses
import json
import os
import shutil

import pytest

from fat_jax import launch
from fat_jax.config import RENAMED, default_config, section, upgrade
from fat_jax.methods import resolve_method
from fat_jax.methods.objectives import MART, TRADES, MEPObjective
from fat_jax.methods.regularizers import AAER, ELLE, GradAlign, LCo, LStable
from fat_jax.methods.training_attacks import AdaptiveAttack, DynamicAttack, PriorAttack, ZeroGrad
from fat_jax.methods.weight_perturbations import AWP, LAP
from fat_jax.run import run_config, run_log, train
from fat_jax.run.checkpoint import Checkpointer
from fat_jax.run.runs import Run, method_label

# config.json of a run written by fat_jax before the sections (its default config, with
# N-FGSM + LAP + AAER + ELLE + L_stable and a few other fields changed).
FLAT = os.path.join(os.path.dirname(__file__), 'golden', 'config_flat_method.json')


def test_a_section_holds_the_role_defaults():
  lap = section(LAP, 'beta', 'gamma', 'ascent')
  assert lap.beta is None and lap.gamma == LAP.gamma and lap.ascent is LAP.ascent
  lap.beta = 0.5  # a placeholder of the field's type
  with pytest.raises(TypeError):
    lap.beta = 'big'
  assert section(ELLE, 'decay', adaptive=None).to_dict() == {'decay': ELLE.decay, 'adaptive': None}
  with pytest.raises(ValueError, match='no fields'):
    section(LAP, 'gamma', 'beta_max')


# Each section of `config.method` and the role values whose fields it holds.
ROLES = {'lap': (LAP,), 'aaer': (AAER,), 'gradalign': (GradAlign,), 'elle': (ELLE,),
         'mep': (PriorAttack, MEPObjective), 'trades': (TRADES,), 'mart': (MART,), 'awp': (AWP,),
         'zerograd': (ZeroGrad,), 'dart': (DynamicAttack,), 'atas': (AdaptiveAttack,),
         'stable': (LStable,), 'co': (LCo,)}


def test_each_section_field_is_its_roles_field_with_its_default():
  method = default_config().method
  assert {k for k, v in method.items() if hasattr(v, 'items')} == set(ROLES)
  for part, roles in ROLES.items():
    fields = {f.name: f.default for role in roles for f in dataclasses.fields(role)}
    for name, value in method[part].items():
      if part == 'atas' and name in ('step_scale', 'min_step', 'max_step'):
        continue  # × ε here, absolute in the role
      assert name in fields, f'method.{part}.{name}'
      if value is not None:  # None: a switch, off by default
        assert value == fields[name], f'method.{part}.{name}'


def test_the_renamed_fields_all_have_their_place():
  method = default_config().method
  for old, places in RENAMED.items():
    assert old not in method
    for place in places:
      part, field = place.split('.')
      assert field in method[part], place


def test_a_flat_config_is_read_into_the_sections():
  with open(FLAT) as f:
    stored = json.load(f)
  up = upgrade(stored)
  method = up['method']
  assert not RENAMED.keys() & method.keys()
  assert method['lap'] == {'beta': 0.01, 'gamma': 0.5, 'ascent': False}
  assert method['stable'] == {'alpha3': 50.0, 'node': 'C'} and method['co']['node'] == 'C'
  assert method['mep']['lam'] == 3.0 and method['atas']['max_step'] == 1.5
  assert {k: v for k, v in up.items() if k != 'method'} == {
      k: v for k, v in stored.items() if k != 'method'}
  assert upgrade(up) == up  # a current config passes unchanged
  # The same keys as a current config: every field in its section, none left over.
  current = json.loads(default_config().to_json_best_effort())
  assert {k: set(v) if isinstance(v, dict) else None for k, v in method.items()} == {
      k: set(v) if isinstance(v, dict) else None for k, v in current['method'].items()}


def _same_method_spelled_now():
  c = default_config()
  c.model.name, c.model.width, c.data.name, c.eps = 'cnn', 4, 'mnist', 0.1
  c.method.update(dict(name='n_fgsm', lap=dict(beta=0.01, gamma=0.5),
                       aaer=dict(lambda1=1.0, lambda2=1.5, lambda3=0.15),
                       elle=dict(lam=100.0, decay=0.9), stable=dict(alpha3=50.0, node='C'),
                       co=dict(node='C'), mep=dict(lam=3.0), atas=dict(max_step=1.5),
                       dart=dict(weighting='none')))
  return c


def test_a_run_written_before_the_sections_opens_resumes_and_is_checked(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  shutil.copy(FLAT, os.path.join(workdir, 'config.json'))
  run = Run.open(workdir)
  now = _same_method_spelled_now()
  assert run.method == resolve_method(now.method, now.eps)
  assert run.method.lap.gamma == 0.5 and run.method.stable.node == 'C'
  assert method_label(run.config.method) == 'n_fgsm+lap+aaer+elle+stable'
  run_config.check_against_run(now, workdir)  # evaluation: no contradiction
  run_log.append_record(workdir, {'epoch': 1})  # a run that trained an epoch
  with Checkpointer(workdir) as checkpointer:
    train._check_resumable(workdir, now, checkpointer)  # resumes with this config
    now.method.lap.beta = 0.02
    with pytest.raises(ValueError, match=r"different config \(sections \['method'\]\)"):
      train._check_resumable(workdir, now, checkpointer)


def test_an_old_flag_names_the_new_place():
  argv = ['launch.py', '--config=configs/quickstart.py', '--config.method.feature_node=C']
  line = launch.flag_error(AttributeError(KeyError("'feature_node'")), argv)
  assert line == ("error: --config.method.feature_node: the config has no field 'feature_node'. "
                  "The method's components have sections: use --config.method.stable.node and "
                  '--config.method.co.node')
