"""Robustness evaluation.

Modules, one job each:
  suites       `evaluate`: an attack suite on any JAX classifier, in padded, bucketed batches
  registry     `ATTACKS`: one entry per attack (how it runs, where it applies); `SUITES`,
               `SuiteOptions`, `attack_batch`
  checks       the sanity checks run with every suite (verdicts in `fat_jax.evaluate.sanity`)
  classifier   `Classifier`: the model an evaluation attacks or scores; `from_logits_fn`,
               `from_params_fn` adapt plain f(x) / f(params, x) -> logits
  output       `format_table` (console) and `save_report` (JSON)
  robustbench  `robustbench_entry`: a report as a RobustBench model-info entry
  monitor      `evaluate_robustness` / `robust_flags`: the training loop's clean/FGSM/PGD monitor
  binarization `binarization_test`: can the attacks find the adversarial example a binarized
               model provably has (Zimmermann et al., NeurIPS 2022)

No module here imports models, methods or checkpoints: a trained run is evaluated through
`fat_jax.run.runs.Run` by `fat_jax.analysis.evaluators.evaluate_run` (``launch.py --mode=eval``).
"""
from fat_jax.evaluate.binarization import binarization_test
from fat_jax.evaluate.checks import probe_batch
from fat_jax.evaluate.classifier import Classifier, from_logits_fn, from_params_fn
from fat_jax.evaluate.monitor import PGDSettings, evaluate_robustness, robust_flags
from fat_jax.evaluate.output import format_table, save_report
from fat_jax.evaluate.registry import (ATTACKS, EOT_ATTACKS, SUITES, SuiteOptions,
                                       attack_batch)
from fat_jax.evaluate.suites import evaluate, score_batch

__all__ = ['ATTACKS', 'EOT_ATTACKS', 'SUITES', 'Classifier', 'PGDSettings', 'SuiteOptions',
           'attack_batch', 'binarization_test', 'evaluate', 'evaluate_robustness', 'format_table', 'from_logits_fn',
           'from_params_fn', 'probe_batch', 'robust_flags', 'save_report', 'score_batch']

