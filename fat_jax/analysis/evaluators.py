"""Evaluators: `evaluator(run) -> artefact`, each reading a `Run` (its checkpoint, data and the
settings of its config) and writing its artefact into the run directory. ``launch.py --mode``
picks one from `EVALUATORS`; the report reads their artefacts.

| mode | evaluator | artefact |
|---|---|---|
| eval | `evaluate_run` | ``eval_<suite>[_L2].json``, ``eval_<suite>[_L2]_flags.npz``, RobustBench entry |
| robustness | `robustness.robustness_run` (the training loop's monitor and final evaluation) | ``robustness_epoch<E>.json``, ``robustness_epoch<E>_flags.npz`` |
| noise_eval | `noise_eval.evaluate_noise_run` | ``eval_noise.json`` |
| analyze | `feature_analysis.analyze_run` | ``analysis.json``, ``tact.npz`` |
| shortcuts | `shortcut_removal.shortcut_removal_run` | ``shortcuts.json``, ``shortcuts.png`` |
| examples | `adversarial_examples` | ``examples.npz`` (the report's adversarial examples) |

The layer-wise landscapes (`landscape.compute_landscape(run, ...)`) take their own settings on
the command line, ``python -m fat_jax.analysis.landscape WORKDIR``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.analysis.feature_analysis import analyze_run
from fat_jax.analysis.landscape import adversarial_inputs
from fat_jax.analysis.noise_eval import evaluate_noise_run
from fat_jax.analysis.robustness import robustness_done, robustness_run
from fat_jax.analysis.shortcut_removal import FIGURE as SHORTCUTS_FIGURE, REPORT as SHORTCUTS_REPORT
from fat_jax.analysis.shortcut_removal import shortcut_removal_run
from fat_jax.attacks.eot import with_input_noise
from fat_jax.evaluate.output import save_report
from fat_jax.evaluate.robustbench import AUTOATTACK_SUITES, robustbench_entry, save_robustbench_entry
from fat_jax.evaluate.suites import SuiteOptions, evaluate
from fat_jax.methods import evaluated_weights
from fat_jax.parallel import is_writer, make_data_mesh
from fat_jax.run import run_log
from fat_jax.run.runs import Run, is_run

ARCHITECTURES = {'preact_resnet18': 'PreActResNet-18', 'resnet18': 'ResNet-18',
                 'mnist_net': 'MNIST CNN (locuslab)', 'cnn': 'CNN',
                 'vit_small': 'ViT-small'}  # RobustBench's names
EXAMPLES = 'examples.npz'
ADV_EXAMPLES = 8


def architecture_name(model_config) -> str:
  """The network's name in RobustBench's style (WideResNet-34-10, PreActResNet-18, ...)."""
  if model_config.name in ('wide_resnet', 'dm_wide_resnet'):
    return f'WideResNet-{model_config.depth}-{model_config.widen_factor}'
  return ARCHITECTURES.get(model_config.name, model_config.name)


def evaluation_stem(eval_config) -> str:
  """``eval_<suite>``, with ``_<norm>`` for a threat model other than L∞."""
  return f'eval_{eval_config.suite}' + ('' if eval_config.norm == 'Linf' else
                                        f'_{eval_config.norm}')


def evaluate_run(run: Run) -> dict:
  """`evaluate` on a checkpoint of `run` with the suite of `config.eval`.

  Uses the first `eval.n` test points, ε = `eval.eps` (None: the training ε),
  the `SuiteOptions` fields found in `config.eval`, `eval.input_noise` > 0 for
  the randomised model f(x + r) (`eval.noise_kind`), and for 'transfer' the
  latest checkpoint of `eval.surrogate_workdir` (its own config.json). A run that keeps a
  weight EMA is evaluated (and attacks as a surrogate) with it; the report's
  ``evaluated_weights`` says which ('ema' or 'model').
  The threat model is `eval.norm` ('Linf' or 'L2'), `eval.individual` runs every attack on
  all points; `eval.binarization` adds the binarization test to the checks (on
  `eval.binarization_n` points). Writes ``eval_<suite>.json`` (L2: ``eval_<suite>_L2.json``) and the per-point
  flags ``eval_<suite>[_L2]_flags.npz``; for an AutoAttack suite also the RobustBench entry
  ``robustbench_<suite>_<norm>.json`` (metadata from `eval.robustbench`).
  """
  config = run.config
  e = config.eval
  model, ts, epoch = run.restore(e.epoch, conv=e.get('conv'))
  x, y = run.points('test', e.n)
  surrogate = None
  if e.suite == 'transfer':
    if not (e.surrogate_workdir and is_run(e.surrogate_workdir)):
      raise FileNotFoundError(f"suite 'transfer' needs eval.surrogate_workdir, a run directory "
                              f'with config.json and checkpoints; got {e.surrogate_workdir!r}.')
    other, other_ts, _ = Run.open(e.surrogate_workdir).restore(info=run.data.info,
                                                                conv=e.get('conv'))
    surrogate = (other.apply, evaluated_weights(other_ts)[1], other_ts.batch_stats)
  apply_fn = (with_input_noise(model.apply, e.input_noise, e.noise_kind, e.noise_clip)
              if e.input_noise else model.apply)
  options = {f.name: e[f.name] for f in dataclasses.fields(SuiteOptions)
             if e.get(f.name) is not None}
  if e.get('binarization_n') is not None:
    options['binarization_n'] = e.binarization_n
  checks = e.checks and (('binarization',) if e.get('binarization') else True)
  weights, params = evaluated_weights(ts)
  report = evaluate(apply_fn, params, ts.batch_stats, x, y, suite=e.suite,
                    eps=run.eval_eps, seed=config.seed,
                    attacks=tuple(e.attacks) or None, surrogate=surrogate,
                    randomized=bool(e.input_noise), batch_size=e.batch_size, checks=checks,
                    eps_sweep=e.eps_sweep, square_check=e.square_check,
                    check_pgd_steps=e.check_pgd_steps, eot_check_n=e.eot_check_n,
                    progress=config.progress, mesh=make_data_mesh(), norm=e.norm,
                    individual=e.individual, **options)
  report.update(evaluated_epoch=epoch, evaluated_weights=weights, method=config.method.name,
                dataset=config.data.name, model=config.model.name, workdir=run.workdir)
  stem = evaluation_stem(e)
  if is_writer():
    save_report(report, os.path.join(run.workdir, f'{stem}.json'))
    if e.suite in AUTOATTACK_SUITES:
      rb = e.robustbench
      entry = robustbench_entry(
          report, dataset=config.data.name,
          architecture=rb.architecture or architecture_name(config.model),
          name=rb.name, link=rb.link, authors=rb.authors, venue=rb.venue, reported=rb.reported,
          additional_data=rb.additional_data, footnote=rb.footnote)
      save_robustbench_entry(entry, os.path.join(run.workdir,
                                                 f'robustbench_{e.suite}_{e.norm}.json'))
  run_log.write_arrays(run.workdir, f'{stem}_flags.npz', report['flags'])
  return report


# ---------------------------------------------------------------------------
# The report's adversarial examples.

@functools.partial(jax.jit, static_argnums=0)
def _predict(model, params, state, x):
  return model.apply(params, state, x, False)[0].argmax(-1)


def examples_epoch(run: Run) -> int:
  """The checkpoint the examples show: the evaluated one, or the latest kept if it is gone."""
  epochs = run.epochs()
  if not epochs:
    raise FileNotFoundError(f'no checkpoints in {run.workdir}')
  wanted = run.results.get('evaluated_epoch') if run.results else None
  return wanted if wanted in epochs else epochs[-1]


def adversarial_examples(run: Run, n: int = ADV_EXAMPLES, seed: int = 0) -> dict:
  """Clean, training-attack and PGD inputs of the first `n` test points at `examples_epoch`,
  with labels and predictions (host arrays), written to ``examples.npz``: the run's training
  attack and PGD with the final-evaluation settings maximising the CE in evaluation mode
  (`landscape.adversarial_inputs`)."""
  epoch = examples_epoch(run)
  model, ts, _ = run.restore(epoch)
  params = evaluated_weights(ts)[1]
  x, y = (jnp.asarray(a) for a in run.points('test', n))
  inputs = adversarial_inputs(params, ts.batch_stats, x, y, jax.random.key(seed),
                              run.clock(epoch), model=model, attack=run.method.attack,
                              pgd=run.final_pgd)
  examples = {'epoch': epoch, 'labels': np.asarray(y), 'eps': run.eval_eps,
              'predictions': {k: np.asarray(_predict(model, params, ts.batch_stats, v))
                              for k, v in inputs.items()},
              'inputs': {k: np.asarray(v) for k, v in inputs.items()}}
  if is_writer():
    run_log.write_arrays(run.workdir, EXAMPLES, _flat(examples))
  return examples


def _flat(examples: dict) -> dict:
  return {'epoch': examples['epoch'], 'labels': examples['labels'], 'eps': examples['eps'],
          **{f'{group}/{k}': v for group in ('predictions', 'inputs')
             for k, v in examples[group].items()}}


def read_examples(run: Run) -> dict | None:
  """The ``examples.npz`` of `run`, None when it has none."""
  path = os.path.join(run.workdir, EXAMPLES)
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as f:
    arrays = dict(f)
  examples = {'epoch': int(arrays.pop('epoch')), 'labels': arrays.pop('labels'),
              'eps': float(arrays.pop('eps')), 'predictions': {}, 'inputs': {}}
  for key, value in arrays.items():
    group, kind = key.split('/', 1)
    examples[group][kind] = value
  return examples


def current_examples(run: Run) -> dict:
  """The run's ``examples.npz`` if it shows `examples_epoch`, else `adversarial_examples`."""
  stored = read_examples(run)
  return stored if stored and stored['epoch'] == examples_epoch(run) else \
      adversarial_examples(run)


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """An evaluator of a run and the line that tells where its artefact went."""
  run: Callable[[Run], dict]
  done: Callable[[Run, dict], str]
  data_parallel: bool = False   # splits its batches over `make_data_mesh()`


def _eval_done(run: Run, report: dict) -> str:
  return (f"Results: {run.workdir}/{evaluation_stem(run.config.eval)}.json ({report['norm']}, "
          f"epoch {report['evaluated_epoch']}: clean {report['clean_accuracy']:.4f}, robust "
          f"{report['robust_accuracy']:.4f})")


EVALUATORS = {
    'eval': Evaluator(evaluate_run, _eval_done, data_parallel=True),
    'robustness': Evaluator(robustness_run, robustness_done, data_parallel=True),
    'noise_eval': Evaluator(evaluate_noise_run,
                            lambda run, _: f'Results: {run.workdir}/eval_noise.json'),
    'analyze': Evaluator(analyze_run, lambda run, _: f'Results: {run.workdir}/analysis.json, '
                                                     f'{run.workdir}/tact.npz'),
    'shortcuts': Evaluator(shortcut_removal_run,
                           lambda run, _: f'Results: {run.workdir}/{SHORTCUTS_REPORT}, '
                                          f'{run.workdir}/{SHORTCUTS_FIGURE}',
                           data_parallel=True),
    'examples': Evaluator(adversarial_examples,
                          lambda run, _: f'Results: {run.workdir}/{EXAMPLES}'),
}
