"""Evaluation of a trained run's checkpoints: `restore_model` (model + train state of an
epoch) and `evaluate_checkpoint` (``launch.py --mode=eval``).

The one module of `fat_jax.evaluate` that knows models, methods and checkpoints.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import numpy as np

from fat_jax import run_log
from fat_jax.attacks.eot import with_input_noise
from fat_jax.checkpoint import Checkpointer
from fat_jax.config import eval_eps
from fat_jax.data import load_dataset
from fat_jax.errors import command_name
from fat_jax.evaluate.output import save_report
from fat_jax.evaluate.robustbench import AUTOATTACK_SUITES, robustbench_entry, save_robustbench_entry
from fat_jax.evaluate.suites import SuiteOptions, evaluate
from fat_jax.methods import evaluated_weights, init_train_state
from fat_jax.models import build_model
from fat_jax.optim import WeightAverage
from fat_jax.parallel import is_writer, make_data_mesh

ARCHITECTURES = {'preact_resnet18': 'PreActResNet-18', 'resnet18': 'ResNet-18',
                 'mnist_net': 'MNIST CNN (locuslab)', 'cnn': 'CNN',
                 'vit_small': 'ViT-small'}  # RobustBench's names


def architecture_name(model_config) -> str:
  """The network's name in RobustBench's style (WideResNet-34-10, PreActResNet-18, ...)."""
  if model_config.name in ('wide_resnet', 'dm_wide_resnet'):
    return f'WideResNet-{model_config.depth}-{model_config.widen_factor}'
  return ARCHITECTURES.get(model_config.name, model_config.name)


def restore_model(model_config, info, workdir: str, epoch: int = 0):
  """(model, train state, epoch): `build_model(model_config, info)` and its checkpoint
  `epoch` (0 = the latest) of the run in `workdir`, with its weight average when it holds one
  (`methods.evaluated_weights` picks the weights to evaluate)."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'No checkpoints in {workdir}: train there first '
                            f'({command_name()} --mode=train ...).')
  model = build_model(model_config, info)
  with Checkpointer(workdir) as checkpointer:
    epoch = epoch or checkpointer.latest_verified_epoch()
    if epoch is None or epoch not in checkpointer.epochs():
      raise FileNotFoundError(f'No checkpoint of epoch {epoch} in {workdir} (have '
                              f'{checkpointer.epochs()}).')
    # The shapes of a fresh state suffice (eval_shape: no initialisation is compiled or run).
    ema = WeightAverage(0.0) if checkpointer.has_ema(epoch) else None  # only its shapes count
    like = jax.eval_shape(lambda: init_train_state(model, jax.random.key(0), ema=ema))
    return model, checkpointer.restore(epoch, like), epoch


def evaluate_checkpoint(config, workdir: str) -> dict:
  """`evaluate` on a checkpoint of the run in `workdir` with the suite of `config.eval`.

  Uses the first `eval.n` test points, ε = `eval.eps` (None: the training ε),
  the `SuiteOptions` fields found in `config.eval`, `eval.input_noise` > 0 for
  the randomised model f(x + r) (`eval.noise_kind`), and for 'transfer' the
  latest checkpoint of `eval.surrogate_workdir` (its own config.json). A run that keeps a
  weight EMA is evaluated (and attacks as a surrogate) with it; the report's
  ``evaluated_weights`` says which ('ema' or 'model').
  The threat model is `eval.norm` ('Linf' or 'L2'), `eval.individual` runs every attack on
  all points. Writes ``eval_<suite>.json`` (L2: ``eval_<suite>_L2.json``) and the per-point
  flags ``eval_<suite>[_L2]_flags.npz``; for an AutoAttack suite also the RobustBench entry
  ``robustbench_<suite>_<norm>.json`` (metadata from `eval.robustbench`).
  """
  workdir = os.path.abspath(workdir)
  e = config.eval
  data = load_dataset(config.data)
  model, ts, epoch = restore_model(config.model, data.info, workdir, e.epoch)
  n = e.n or len(data.test_images)
  x = data.test_images[:n].astype(np.float32) / 255.0
  surrogate = None
  if e.suite == 'transfer':
    stored = run_log.read_json(e.surrogate_workdir, run_log.CONFIG) if e.surrogate_workdir \
        else None
    if stored is None:
      raise FileNotFoundError(f"suite 'transfer' needs eval.surrogate_workdir, a run directory "
                              f'with config.json and checkpoints; got {e.surrogate_workdir!r}.')
    other, other_ts, _ = restore_model(ml_collections.ConfigDict(stored['model']), data.info,
                                       e.surrogate_workdir)
    surrogate = (other.apply, evaluated_weights(other_ts)[1], other_ts.batch_stats)
  apply_fn = (with_input_noise(model.apply, e.input_noise, e.noise_kind, e.noise_clip)
              if e.input_noise else model.apply)
  options = {f.name: e[f.name] for f in dataclasses.fields(SuiteOptions)
             if e.get(f.name) is not None}
  weights, params = evaluated_weights(ts)
  report = evaluate(apply_fn, params, ts.batch_stats, x, data.test_labels[:n], suite=e.suite,
                    eps=eval_eps(config), seed=config.seed,
                    attacks=tuple(e.attacks) or None, surrogate=surrogate,
                    randomized=bool(e.input_noise), batch_size=e.batch_size, checks=e.checks,
                    eps_sweep=e.eps_sweep, square_check=e.square_check,
                    check_pgd_steps=e.check_pgd_steps, eot_check_n=e.eot_check_n,
                    progress=config.progress, mesh=make_data_mesh(), norm=e.norm,
                    individual=e.individual, **options)
  report.update(evaluated_epoch=epoch, evaluated_weights=weights, method=config.method.name,
                dataset=config.data.name, model=config.model.name, workdir=workdir)
  stem = f'eval_{e.suite}' + ('' if e.norm == 'Linf' else f'_{e.norm}')
  if is_writer():
    save_report(report, os.path.join(workdir, f'{stem}.json'))
    if e.suite in AUTOATTACK_SUITES:
      rb = e.robustbench
      entry = robustbench_entry(
          report, dataset=config.data.name,
          architecture=rb.architecture or architecture_name(config.model),
          name=rb.name, link=rb.link, authors=rb.authors, venue=rb.venue, reported=rb.reported,
          additional_data=rb.additional_data, footnote=rb.footnote)
      save_robustbench_entry(entry, os.path.join(workdir, f'robustbench_{e.suite}_{e.norm}.json'))
  run_log.write_arrays(workdir, f'{stem}_flags.npz', report['flags'])
  return report
