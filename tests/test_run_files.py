"""The shared pieces of a run's files: the evaluation ε of a config (`config.eval_eps`), whole
files written atomically (`run_log.atomic_write`, `atomic_write_json`), and `Checkpointer` as a
context manager."""
import json
import os

import ml_collections
import pytest

from fat_jax.config import default_config, eval_eps
from fat_jax.run import run_log
from fat_jax.run.checkpoint import Checkpointer


def test_eval_eps_is_eval_eps_else_the_training_eps():
  config = default_config()
  config.eps = 6 / 255
  assert eval_eps(config) == 6 / 255
  config.eval.eps = 8 / 255
  assert eval_eps(config) == 8 / 255
  # A config.json written before eval.eps existed.
  stored = json.loads(default_config().to_json_best_effort())
  del stored['eval']['eps']
  assert eval_eps(ml_collections.ConfigDict(stored)) == 8 / 255


def test_atomic_write_json_writes_indented_json_and_leaves_no_temporary_file(tmp_path):
  obj = {'b': [1, 2.5], 'a': {'z': None, 'y': 'é'}}
  path = str(tmp_path / 'x.json')
  assert run_log.atomic_write_json(path, obj) == path
  with open(path) as f:
    assert f.read() == json.dumps(obj, indent=2, sort_keys=True)
  run_log.atomic_write_json(path, obj, sort_keys=False)  # the caller's key order
  with open(path) as f:
    assert list(json.load(f)) == ['b', 'a']
  assert os.listdir(tmp_path) == ['x.json']


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
  path = str(tmp_path / 'x.json')
  run_log.atomic_write_json(path, {'old': 1})
  with pytest.raises(TypeError):
    run_log.atomic_write_json(path, {'new': object()})
  with open(path) as f:
    assert json.load(f) == {'old': 1}
  assert os.listdir(tmp_path) == ['x.json']


def test_checkpointer_closes_when_its_block_raises(tmp_path, monkeypatch):
  closed = []
  close = Checkpointer.close
  monkeypatch.setattr(Checkpointer, 'close', lambda self: closed.append(self) or close(self))
  with pytest.raises(RuntimeError, match='inside'):
    with Checkpointer(str(tmp_path)) as checkpointer:
      assert checkpointer.epochs() == []
      raise RuntimeError('inside')
  assert closed == [checkpointer]
