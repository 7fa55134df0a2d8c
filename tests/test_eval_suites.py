"""Evaluation suites: the AutoAttack-standard report, determinism, ε limits, gradient masking,
randomised models, transfer, errors, and ``launch.py --mode=eval`` end to end."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.analysis.evaluators import evaluate_run
from fat_jax.attacks import with_input_noise
from fat_jax.evaluate import sanity
from fat_jax.evaluate import evaluate, format_table, save_report
from fat_jax.methods import init_train_state
from fat_jax.models import build_model
from fat_jax.run.checkpoint import Checkpointer
from fat_jax.run.runs import Run
from tests.fixtures import write_idx_dir
from tests.test_apgd import init_mlp, mlp_apply, noisy_problem, trained  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 0.1
SMALL = dict(apgd_steps=10, fab_steps=10, square_queries=100, n_target_classes=3, batch_size=64,
             progress=False)


@pytest.fixture(scope='module')
def report(trained):  # noqa: F811
  params, x, y = trained
  return evaluate(mlp_apply, params, {}, x, y, eps=EPS, **SMALL)


def test_aa_standard_report(report, trained, tmp_path):  # noqa: F811
  params, x, y = trained
  assert report['attacks'] == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
  assert (report['n'], report['eps'], report['seed']) == (len(x), EPS, 0)
  assert report['settings']['apgd_steps'] == 10 and report['settings']['n_target_classes'] == 3
  curve = [report['clean_accuracy']] + list(report['robust_accuracy_by_attack'].values())
  assert curve == sorted(curve, reverse=True) and curve[-1] == report['robust_accuracy']
  assert report['clean_accuracy'] > 0.9 and 0.1 < report['robust_accuracy'] < 0.9
  assert {c['status'] for c in report['checks'].values()} <= {sanity.PASS, sanity.SKIPPED}
  more = report['checks']['more_iterations']
  assert more['strong_accuracy'] <= more['weak_accuracy'] < report['clean_accuracy']
  assert report['checks']['frozen_noise']['status'] == sanity.SKIPPED
  # APGD-CE on each clean-correct point: 1 clean + 11 gradient forwards, 1 scoring forward.
  correct = round(report['clean_accuracy'] * len(x))
  assert report['passes']['apgd-ce'] == {'forward': 13 * correct, 'backward': 11 * correct}
  assert report['forward_passes'] == sum(p['forward'] for k, p in report['passes'].items()
                                         if k != 'checks')
  # APGD-T: per target run, 1 ranking + 1 clean + 11 gradient forwards + 1 scoring forward, on
  # the points robust before that target (3 targets): between the counts after and before it.
  robust = {k: round(v * len(x)) for k, v in report['robust_accuracy_by_attack'].items()}
  passes = report['passes']
  assert 3 * 14 * robust['apgd-t'] <= passes['apgd-t']['forward'] <= 3 * 14 * robust['apgd-ce']
  assert 3 * 10 * robust['fab-t'] <= passes['fab-t']['backward'] <= 3 * 10 * robust['apgd-t']
  # The adversarial examples are valid and reproduce the robust flags.
  x_adv = report['x_adv']
  assert np.abs(x_adv - np.asarray(x)).max() <= EPS + 1e-6 and 0 <= x_adv.min() <= x_adv.max() <= 1
  correct_at = np.asarray(mlp_apply(params, {}, jnp.asarray(x_adv), False)[0].argmax(-1) == y)
  np.testing.assert_array_equal(correct_at, report['flags']['robust'])
  stored = json.load(open(save_report(report, str(tmp_path / 'r.json'))))
  assert stored['robust_accuracy'] == report['robust_accuracy'] and 'x_adv' not in stored
  assert 'apgd-t' in format_table(report)


def test_suite_and_checks_timed_apart(report):
  timing = report['timing']
  assert 'checks' in report and timing['checks_s'] == report['time_by_attack_s']['checks'] > 0
  assert 0 < timing['suite_s'] and timing['suite_s'] + timing['checks_s'] <= report['wall_time_s']


def test_same_seed_same_result(report, trained):  # noqa: F811
  params, x, y = trained
  again = evaluate(mlp_apply, params, {}, x, y, eps=EPS, **SMALL)
  timeless = lambda r: {k: v for k, v in r.items()
                        if k not in ('time_by_attack_s', 'wall_time_s', 'timing', 'flags',
                                     'scores', 'x_adv')}
  assert timeless(again) == timeless(report)
  np.testing.assert_array_equal(again['x_adv'], report['x_adv'])


def test_eps_zero_gives_clean_accuracy_and_eps_one_zero(trained):  # noqa: F811
  params, x, y = trained
  zero = evaluate(mlp_apply, params, {}, x, y, eps=0.0, checks=False, **SMALL)
  assert zero['robust_accuracy'] == zero['clean_accuracy'] > 0.9
  one = evaluate(mlp_apply, params, {}, x, y, eps=1.0, checks=False, **SMALL)
  assert one['robust_accuracy'] == 0.0


def quantized_apply(params, state, x, train):
  """Input quantisation to 16 levels: the input gradient is exactly zero."""
  return mlp_apply(params, state, jnp.round(x * 16) / 16, train)


def test_gradient_masking_is_flagged_and_broken_by_square(trained):  # noqa: F811
  params, x, y = trained
  masked = evaluate(quantized_apply, params, {}, x, y, suite='custom',
                    attacks=['apgd-ce', 'square'], eps=EPS,
                    **{**SMALL, 'square_queries': 300})
  after = masked['robust_accuracy_by_attack']
  assert after['apgd-ce'] > 0.9 and after['square'] < after['apgd-ce'] - 0.2
  assert masked['checks']['zero_gradients']['status'] == sanity.WARN
  assert masked['checks']['zero_gradients']['share'] == 1.0
  assert masked['checks']['square']['status'] == sanity.WARN
  # A model returning probabilities is caught by the logits check.
  probabilities = jax.nn.softmax(mlp_apply(params, {}, x, False)[0])
  assert sanity.check_logits(np.asarray(probabilities))['status'] == sanity.WARN


def two_sided_apply(params, state, x, train):
  """Three classes along t = mean(x) − ½ ∈ [−0.3, 0.3]; at t = 0 class 0 wins. CE ascent runs
  to the side it starts on: t < −0.13 is misclassified with CE ≈ 0.7–0.8, while t = 0.3 stays
  correct with CE ≈ 1.05. PGD's max-CE restart rule thus prefers a failed restart on the
  right to a successful one on the left."""
  t = x.reshape(len(x), -1).mean(axis=1) - 0.5
  logits = [jnp.zeros_like(t), 2.2 * t ** 2 - 0.5 * t - 0.1, 10.0 * t - 3.1]
  return jnp.stack(logits, axis=1), state, {}


def test_more_iterations_check_catches_an_attack_that_is_not_monotone():
  x, y = np.full((32, 1), 0.5, np.float32), np.zeros(32, np.int32)
  result = evaluate(two_sided_apply, {}, {}, x, y, suite='custom', attacks=['fgsm'], eps=0.3,
                    check_pgd_steps=4, batch_size=32, progress=False)
  more = result['checks']['more_iterations']
  assert more['status'] == sanity.WARN and 'PGD-8-2' in more['message']
  assert more['strong_accuracy'] >= more['weak_accuracy'] + 0.1
  assert more['raised'] == round((more['strong_accuracy'] - more['weak_accuracy']) * 32)


def test_checks_of_more_effort_frozen_noise_and_eot_as_functions():
  assert sanity.check_more_iterations('PGD-20', 0.5, 'PGD-40-2', 0.5, 0)['status'] == sanity.PASS
  assert sanity.check_more_iterations('PGD-20', 0.5, 'PGD-40-2', 0.51, 3)['status'] == sanity.WARN
  ones, zeros, half = np.ones(100), np.zeros(100), np.full(100, 0.5)
  assert sanity.check_frozen_noise(zeros, half, ones)['status'] == sanity.PASS
  # Above the EOT result, or above the noise-free result, by more than 2 points and chance.
  assert sanity.check_frozen_noise(half, zeros)['status'] == sanity.WARN
  assert sanity.check_frozen_noise(half, ones, zeros)['status'] == sanity.WARN
  frozen = np.r_[np.ones(53), np.zeros(47)]
  assert sanity.check_frozen_noise(frozen, half)['status'] == sanity.PASS  # 3 points: chance
  assert sanity.check_frozen_noise(frozen, half + 0.02)['status'] == sanity.PASS
  assert sanity.check_eot_samples(20, half, 100, half - 0.01)['status'] == sanity.PASS
  drop = sanity.check_eot_samples(20, half, 100, half - 0.05)
  assert drop['status'] == sanity.WARN and abs(drop['drop'] - 0.05) < 1e-9


@pytest.mark.slow
def test_aa_rand_scores_a_randomized_model_over_fresh_draws():
  noisy, params, x, y = noisy_problem()
  result = evaluate(noisy, params, {}, x, y, suite='aa_rand', eps=0.1, randomized=True,
                    apgd_steps=10, progress=False)
  assert result['attacks'] == ['apgd-ce', 'apgd-dlr'] and result['settings']['eot_samples'] == 20
  assert result['n_draws'] == 100 and result['passes']['final']['forward'] == 100 * len(x)
  lo, hi = result['robust_accuracy_ci95']
  assert lo <= result['robust_accuracy'] <= hi < result['clean_accuracy']
  assert 0 <= result['robust_majority_accuracy'] <= 1
  assert result['checks']['determinism']['status'] == sanity.PASS
  assert result['checks']['determinism']['draw_change'] > 0
  assert result['checks']['reevaluation']['status'] == sanity.INFO
  assert result['checks']['validity']['status'] == sanity.PASS
  # The sin term masks single-draw gradients with or without the noise: frozen to one draw,
  # the model keeps an accuracy far above the EOT result (the rule: test_checks_..._functions).
  frozen = result['checks']['frozen_noise']
  assert frozen['eot_accuracy'] == result['robust_accuracy']
  assert frozen['frozen_accuracy'] > frozen['eot_accuracy'] + 0.08
  assert abs(frozen['frozen_accuracy'] - frozen['noise_free_accuracy']) < 0.1
  assert 'eot_check_n' in result['checks']['eot_samples']['message']
  assert result['checks']['more_iterations']['status'] == sanity.SKIPPED


@pytest.mark.slow
def test_eot_check_warns_when_k_is_too_small():
  noisy, params, x, y = noisy_problem()
  result = evaluate(noisy, params, {}, x, y, suite='aa_rand', eps=0.1, randomized=True,
                    apgd_steps=10, eot_samples=1, eot_check_n=len(x), progress=False)
  check = result['checks']['eot_samples']
  assert check['status'] == sanity.WARN and (check['samples'], check['n']) == (1, len(x))
  assert check['accuracy'] == result['robust_accuracy'] > check['check_accuracy'] + 0.1
  # A single-draw attack is weak here: the frozen draw falls below it and the noise-free model.
  frozen = result['checks']['frozen_noise']
  assert frozen['status'] == sanity.PASS and frozen['frozen_accuracy'] < result['clean_accuracy']


def test_transfer_from_the_model_itself_equals_white_box(trained):  # noqa: F811
  params, x, y = trained
  kw = dict(eps=EPS, checks=False, **SMALL)
  white = evaluate(mlp_apply, params, {}, x, y, suite='custom', attacks=['apgd-ce'], **kw)
  itself = evaluate(mlp_apply, params, {}, x, y, suite='transfer',
                    surrogate=(mlp_apply, params, {}), **kw)
  other = evaluate(mlp_apply, params, {}, x, y, suite='transfer',
                   surrogate=(mlp_apply, init_mlp(jax.random.key(9), 16), {}), **kw)
  assert itself['robust_accuracy'] == white['robust_accuracy']
  assert other['robust_accuracy'] > white['robust_accuracy']


@pytest.mark.parametrize('kw, match', [
    (dict(suite='aa_ultra'), 'Unknown suite'),
    (dict(suite='custom', attacks=['apgd-xe']), 'Unknown attacks'),
    (dict(suite='custom'), 'needs a list'),
    (dict(apgd_stps=5), 'Unknown suite options'),
    (dict(suite='transfer'), 'surrogate'),
    (dict(eps=-0.1), 'eps'),
    (dict(suite='pgd', randomized=True), 'no EOT'),
    (dict(pixels=255.0), r'pixel space \[0, 1\]'),
])
def test_bad_requests_fail_clearly(trained, kw, match):  # noqa: F811
  params, x, y = trained
  apply_fn = with_input_noise(mlp_apply, 0.1) if kw.get('randomized') else mlp_apply
  x = x * kw.pop('pixels', 1.0)
  with pytest.raises(ValueError, match=match):
    evaluate(apply_fn, params, {}, x, y, **{'eps': EPS, **kw})


CONFIG = '''
from fat_jax.config import default_config


def get_config():
  c = default_config()
  c.data.name, c.data.dir = 'fashion_mnist', {data_dir!r}
  c.model.name, c.model.width, c.model.depth, c.model.batchnorm = 'cnn', 4, 2, True
  c.eps, c.batch_size, c.num_epochs, c.progress = 0.1, 16, 1, False
  c.eval.n, c.eval.monitor_n, c.eval.batch_size = 8, 8, 8
  c.eval.pgd_steps, c.eval.pgd_restarts, c.eval.monitor_pgd_steps = 2, 1, 1
  c.eval.suite, c.eval.attacks = 'custom', ('apgd-ce',)
  c.eval.apgd_steps, c.eval.check_pgd_steps = 3, 2
  return c
'''


def checkpointed_run(tmp_path, template: str = CONFIG, epoch: int = 1, n_test: int = 8):
  """A run directory in `tmp_path`: the config file `template` over a tiny Fashion-MNIST folder
  and an initialised model saved as `epoch`. Returns (config file, Run)."""
  data_dir = write_idx_dir(str(tmp_path / 'fmnist'), n_train=32, n_test=n_test)
  config_file = tmp_path / 'tiny.py'
  config_file.write_text(template.format(data_dir=data_dir))
  namespace = {}
  exec(config_file.read_text(), namespace)  # pylint: disable=exec-used
  config = namespace['get_config']()
  run = Run(str(tmp_path / 'run'), 'run', config)
  with Checkpointer(run.workdir) as checkpointer:
    checkpointer.save(epoch, init_train_state(build_model(config.model, run.data.info),
                                              jax.random.key(0)))
  return str(config_file), run


@pytest.mark.slow
def test_launch_eval_end_to_end(tmp_path):
  config_file, run = checkpointed_run(tmp_path, epoch=3)
  config, workdir = run.config, run.workdir
  # Twice, with every program kept in a compilation cache: the second run reads them back.
  command = [sys.executable, os.path.join(ROOT, 'launch.py'), f'--config={config_file}',
             f'--workdir={workdir}', '--mode=eval',
             f'--config.compilation_cache={tmp_path / "xla_cache"}']
  env = {**os.environ, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', 'JAX_LOG_COMPILES': '1'}
  first, done = (subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env=env) for _ in range(2))
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'Persistent compilation cache hit' not in first.stderr
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Persistent compilation cache hit' in done.stderr
  assert 'eval_custom.json' in done.stderr
  stored = json.load(open(os.path.join(workdir, 'eval_custom.json')))
  assert stored['evaluated_epoch'] == 3 and stored['n'] == 8 and stored['attacks'] == ['apgd-ce']
  assert stored['robust_accuracy'] <= stored['clean_accuracy']
  assert stored['settings']['apgd_steps'] == 3 and stored['settings']['check_pgd_steps'] == 2
  assert stored['checks']['validity']['status'] == 'pass'
  assert np.load(os.path.join(workdir, 'eval_custom_flags.npz'))['robust'].shape == (8,)
  with pytest.raises(FileNotFoundError, match='No checkpoints'):
    evaluate_run(Run(str(tmp_path / 'none'), 'none', config))


def test_survivor_batches_are_padded_by_at_most_an_eighth_to_few_lengths():
  from fat_jax.evaluate.pieces import padded_length  # pylint: disable=import-outside-toplevel
  for batch_size, devices in ((500, 1), (512, 8), (64, 2)):
    sizes = {m: padded_length(m, batch_size, devices) for m in range(1, batch_size + 1)}
    for m, size in sizes.items():
      assert m <= size <= batch_size and size % devices == 0
      assert size <= max(1.125 * m, m + devices - 1), (m, size)
    for lo in (16, 32, 64, 128):   # a doubling of the survivors compiles at most 8 + 1 lengths
      assert len({sizes[m] for m in range(lo, min(2 * lo, batch_size) + 1)}) <= 9
