"""The clean, FGSM and PGD evaluation of a run: `robustness(run, state)`, the evaluator the
training loop runs on its live state as the monitor (`Run.monitor_pgd` on the first
`eval.monitor_n` test points, every epoch or `eval.monitor_every_steps` steps) and as the final
evaluation (`Run.final_pgd` on the first `eval.n`, into ``results.json``), and that
``launch.py --mode=robustness`` runs on a stored checkpoint (`eval.epoch`, 0: the latest)."""
from __future__ import annotations

import os

from fat_jax.evaluate import evaluate_robustness
from fat_jax.methods import evaluated_weights
from fat_jax.parallel import make_data_mesh
from fat_jax.run import run_log
from fat_jax.run.runs import Run, State


def stem(epoch: int) -> str:
  """The file names of `robustness_run`'s artefacts of `epoch`, without the suffix."""
  return f'robustness_epoch{epoch}'


def robustness(run: Run, state: State | None = None, *, monitor: bool = False) -> dict:
  """`evaluate_robustness` of `state` (None: `run.restore(eval.epoch)`) with its evaluated weights
  (`methods.evaluated_weights`): the final evaluation's PGD and points, or the monitor's with
  `monitor`; seed `config.seed`, batches of `eval.batch_size` over the data-parallel mesh."""
  config = run.config
  e = config.eval
  model, ts, _ = state or run.restore(e.epoch)
  settings, n = (run.monitor_pgd, e.monitor_n) if monitor else (run.final_pgd, e.n)
  images, labels = run.test_batches(n)
  return evaluate_robustness(model, evaluated_weights(ts)[1], ts.batch_stats, images, labels,
                             settings, mesh=make_data_mesh(), batch_size=e.batch_size,
                             seed=config.seed, progress=config.progress,
                             desc='monitor' if monitor else 'final eval')


def robustness_run(run: Run) -> dict:
  """`robustness` of checkpoint `eval.epoch` written to ``robustness_epoch<E>.json`` (with
  the evaluated epoch and weights; the per-point flags in ``robustness_epoch<E>_flags.npz``):
  the final evaluation of any kept epoch, e.g. one before catastrophic overfitting."""
  state = run.restore(run.config.eval.epoch)
  report = robustness(run, state)
  run_log.write_arrays(run.workdir, f'{stem(state.epoch)}_flags.npz', report.pop('flags'))
  report.update(evaluated_epoch=state.epoch,
                evaluated_weights=evaluated_weights(state.train_state)[0])
  run_log.write_json(run.workdir, f'{stem(state.epoch)}.json', report)
  return report


def robustness_done(run: Run, report: dict) -> str:
  epoch = report['evaluated_epoch']
  return (f"Results: {os.path.join(run.workdir, stem(epoch))}.json (epoch {epoch}: clean "
          f"{report['clean_accuracy']:.4f}, FGSM {report['fgsm_accuracy']:.4f}, PGD "
          f"{report['pgd_accuracy']:.4f})")
