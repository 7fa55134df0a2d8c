"""A run directory as one value: `Run`, the one place that knows a workdir.

A run is its config (the stored ``config.json``, or the config a launcher checked against it
with `run_config.check_against_run`), the `Method` its train step ran, the evaluation ε and
final-evaluation PGD, its checkpoints (`epochs`, `restore`, `checkpoints`) and its files
(records, ``results.json``, ``eval_<suite>.json``). The analyses, the evaluators and the report
read a run through it:

  run = Run.open('runs/quickstart/fgsm')
  model, ts, epoch = run.restore()           # the latest verified checkpoint
  x, y = run.points('test', n=500)           # float images in [0, 1], integer labels
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from typing import Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fat_jax.config import eval_eps
from fat_jax.data import StreamingDataset, load_data
from fat_jax.errors import command_name
from fat_jax.evaluate import PGDSettings
from fat_jax.methods import Clock, Method, init_train_state, resolve_method
from fat_jax.models import build_model
from fat_jax.optim import WeightAverage
from fat_jax.recipes import VARIANTS
from fat_jax.run import run_config, run_log
from fat_jax.run.checkpoint import Checkpointer

CHECKPOINTS = 'checkpoints'
SPLITS = ('train', 'test')
# Recipe variants named in the configs: LAP uses 'r', AAER 'rs' for U(−ε, ε), α = 1.25ε.
VARIANT_NAMES = {'lap': ('v', 'r', 'n'), 'aaer': ('rs', 'n')}
# Components a method field switches on (fat_jax.methods.spec), and the methods that have them
# by name.
COMPONENTS = (('lap', 'beta', ('lap',)), ('aaer', 'lambda1', ('aaer',)),
              ('gradalign', 'lam', ('gradalign',)), ('elle', 'lam', ('elle', 'elle_a')),
              ('zerograd', 'q', ('zerograd',)), ('stable', 'alpha3', ('fd',)),
              ('co', 'tact_file', ('induce_co',)), ('trades', 'beta', ('trades',)),
              ('mart', 'beta', ('mart',)))


def method_label(method) -> str:
  """The recipe name of a method config: 'fgsm', 'n_lap', 'rs_aaer', 'n_fgsm+aaer',
  'fgsm+stable', 'awp_trades', ..."""
  name = method.get('name', '?')
  spec = tuple(method.get(k) for k in ('init', 'init_scale', 'alpha', 'project'))
  for variant in VARIANT_NAMES.get(name, ()):
    if spec == VARIANTS[variant]:
      name = f'{variant}_{name}'
      break
  switch = lambda part, field: (method.get(part) or {}).get(field)
  extras = [part for part, field, names in COMPONENTS
            if switch(part, field) not in (None, '') and method.get('name') not in names]
  label = '+'.join([name] + extras)
  return f'awp_{label}' if switch('awp', 'gamma') is not None else label


def is_run(path: str) -> bool:
  return os.path.exists(os.path.join(path, run_log.CONFIG))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the run in `workdir` (its config.json)."""
  stored = run_config.read_stored(workdir)
  if stored is None:
    raise FileNotFoundError(f'No {run_log.CONFIG} in {workdir}: pass the --workdir of a run.')
  return ml_collections.ConfigDict(stored)


def expand_workdirs(paths: Sequence[str]) -> list[str]:
  """`paths`, each folder that is not a run replaced by the runs in its sub-folders (sorted)."""
  workdirs = []
  for path in paths:
    if is_run(path):
      workdirs.append(path)
      continue
    inner = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(path, '*', run_log.CONFIG)))
    if not inner:
      raise FileNotFoundError(f'{path} is not a run directory (no {run_log.CONFIG}) and has no '
                              'run directories inside; pass the --workdir of a training run.')
    workdirs.extend(inner)
  return workdirs


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Short unique names: the folder names, or the paths below the common folder if they clash."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(set(names)) == len(names):
    return names
  common = os.path.commonpath([os.path.abspath(w) for w in workdirs])
  return [os.path.relpath(os.path.abspath(w), common) for w in workdirs]


class State(NamedTuple):
  """A model, its train state and the (1-based) epoch it ends: a restored checkpoint, or the
  training loop's live state."""
  model: object
  train_state: object
  epoch: int


@dataclasses.dataclass(frozen=True)
class Run:
  """One run directory. Its files are read on first use; `config` is the stored config.json
  unless `Run.open` was given the (checked) config of a launcher."""
  workdir: str
  name: str
  config: ml_collections.ConfigDict

  @classmethod
  def open(cls, workdir: str, config: ml_collections.ConfigDict | None = None,
           name: str = '', data=None) -> Run:
    """`data`: the run's data set when the caller has loaded it already (the training loop)."""
    run = cls(workdir, name or os.path.basename(os.path.normpath(workdir)),
              read_config(workdir) if config is None else config)
    if data is not None:
      run.__dict__['data'] = data  # the value of the cached property `data`
    return run

  # The run's files.

  @functools.cached_property
  def records(self) -> list[dict]:
    """The per-epoch records (metrics.jsonl)."""
    return run_log.read_records(self.workdir)

  @functools.cached_property
  def results(self) -> dict | None:
    """The final evaluation (results.json), None before the run ends."""
    return run_log.read_json(self.workdir, run_log.RESULTS)

  @functools.cached_property
  def evaluations(self) -> dict[str, dict]:
    """suite → its report, from every ``eval_<suite>.json``."""
    evaluations = {}
    for path in sorted(glob.glob(os.path.join(self.workdir, 'eval_*.json'))):
      with open(path) as f:
        evaluations[os.path.basename(path)[len('eval_'):-len('.json')]] = json.load(f)
    return evaluations

  @property
  def label(self) -> str:
    return method_label(self.config.get('method', {}))

  # What the run computes with.

  @functools.cached_property
  def method(self) -> Method:
    """The `Method` the train step ran (`method.attack` is its training attack)."""
    return resolve_method(self.config.method, self.config.eps)

  @property
  def eval_eps(self) -> float:
    return eval_eps(self.config)

  @property
  def final_pgd(self) -> PGDSettings:
    """The final-evaluation PGD (`eval.pgd_steps`, `pgd_restarts`, step `pgd_step_size`·ε)."""
    e = self.config.eval
    return self._pgd(e.pgd_steps, e.pgd_restarts)

  @property
  def monitor_pgd(self) -> PGDSettings:
    """The per-epoch monitor's PGD (`eval.monitor_pgd_steps`, `monitor_pgd_restarts`, the same
    step)."""
    e = self.config.eval
    return self._pgd(e.monitor_pgd_steps, e.monitor_pgd_restarts)

  def _pgd(self, steps: int, restarts: int) -> PGDSettings:
    eps = self.eval_eps
    return PGDSettings(eps=eps, steps=int(steps), restarts=int(restarts),
                       step_size=float(self.config.eval.pgd_step_size) * eps)

  def clock(self, epoch: int) -> Clock:
    """The clock of the last step of (1-based) `epoch`, in epochs."""
    return Clock(jnp.asarray(epoch - 1, jnp.int32), 1, int(self.config.num_epochs))

  @functools.cached_property
  def data(self):
    """The run's data set (`data.load_data(config.data)`: in memory, or read from folders)."""
    return load_data(self.config.data)

  def points(self, split: str, n: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` (0: all) points of `split` as float32 images in [0, 1] and labels."""
    if split not in SPLITS:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
    if split == 'test':
      images, labels = self.data.test_subset(n)
    elif isinstance(self.data, StreamingDataset):
      raise ValueError(f'The training images of {self.config.data.name} are streamed, not held '
                       "in memory: use the test split (split='test').")
    else:
      n = min(n or self.data.num_train, self.data.num_train)
      images, labels = self.data.train_images[:n], self.data.train_labels[:n]
    return images.astype(np.float32) / 255.0, labels

  @functools.cached_property
  def _test_batches(self) -> dict:
    return {}

  def test_batches(self, n: int):
    """The first `n` test points as the clean/FGSM/PGD evaluation reads them: uint8 images
    (streamed ones decoded batch by batch) and labels (`data.test_batches`), read once per n."""
    if n not in self._test_batches:
      self._test_batches[n] = self.data.test_batches(n)
    return self._test_batches[n]

  # Checkpoints.

  def epochs(self) -> list[int]:
    """The epochs with a checkpoint."""
    if not os.path.isdir(os.path.join(self.workdir, CHECKPOINTS)):
      return []
    with Checkpointer(self.workdir) as checkpointer:
      return checkpointer.epochs()

  def restore(self, epoch: int = 0, info=None, conv: str | None = None) -> State:
    """(model, train state, epoch): the model of `config.model` and checkpoint `epoch`
    (0 = the latest verified one), with its weight average when it holds one
    (`methods.evaluated_weights` picks the weights to evaluate). `info` (default: the run's
    data set's) gives the classes and input shape; `conv` (default: `config.model.conv`) the
    convolution's formulation (`fat_jax.models.conv`: the same forward values)."""
    if not os.path.isdir(os.path.join(self.workdir, CHECKPOINTS)):
      raise FileNotFoundError(f'No checkpoints in {self.workdir}: train there first '
                              f'({command_name()} --mode=train ...).')
    model_config = self.config.model
    if conv is not None:
      model_config = ml_collections.ConfigDict({**model_config.to_dict(), 'conv': conv})
    model = build_model(model_config, self.data.info if info is None else info)
    with Checkpointer(self.workdir) as checkpointer:
      epoch = epoch or checkpointer.latest_verified_epoch()
      if epoch is None or epoch not in checkpointer.epochs():
        raise FileNotFoundError(f'No checkpoint of epoch {epoch} in {self.workdir} (have '
                                f'{checkpointer.epochs()}).')
      # The shapes of a fresh state suffice (eval_shape: no initialisation is compiled or run).
      ema = WeightAverage(0.0) if checkpointer.has_ema(epoch) else None  # only its shapes count
      like = jax.eval_shape(lambda: init_train_state(model, jax.random.key(0), ema=ema))
      return State(model, checkpointer.restore(epoch, like), epoch)

  def checkpoints(self, epochs: Sequence[int]) -> Iterator[tuple]:
    """Yields (epoch, model, train state) for each of `epochs`, restoring into one state."""
    model, ts, _ = self.restore(epochs[0])
    with Checkpointer(self.workdir) as checkpointer:
      for epoch in epochs:
        if epoch != epochs[0]:
          ts = checkpointer.restore(epoch, ts)
        yield epoch, model, ts


def load_runs(paths: Sequence[str]) -> list[Run]:
  """The runs in `paths` (`expand_workdirs`), named by `run_names`."""
  workdirs = expand_workdirs(paths)
  return [Run.open(w, name=n) for w, n in zip(workdirs, run_names(workdirs))]
