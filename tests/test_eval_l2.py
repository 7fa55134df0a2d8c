"""The evaluation under L2, the aa_plus suite and untargeted FAB, individual mode, the two
scores of a randomised model, the RobustBench entry, and training's refusal of L2."""
import jax
import numpy as np
import pytest

from fat_jax.attacks import with_input_noise
from fat_jax.config import default_config
from fat_jax.evaluate import sanity
from fat_jax.evaluate import evaluate, format_table
from fat_jax.evaluate.robustbench import eps_string, robustbench_entry
from fat_jax.evaluate.suites import suite_options
from fat_jax.run.train import train_and_evaluate
from fat_jax.validation import ConfigError, config_problems
from tests.test_apgd import init_mlp, mlp_apply, toy_data, train_mlp

EPS = 0.5   # L2, on 6 × 6 images
SMALL = dict(apgd_steps=5, fab_steps=5, square_queries=20, n_target_classes=3, batch_size=32,
             check_pgd_steps=3, sweep_steps=3, progress=False)


@pytest.fixture(scope='module')
def model():
  """An MLP trained on 6 × 6 blobs (Square L2 needs ≥ 5 × 5 images); 32 test points."""
  x, y = toy_data(jax.random.key(20), 160, shape=(6, 6, 1))
  params = train_mlp(init_mlp(jax.random.key(21), 36), x, y)
  return params, np.asarray(x[:32]), np.asarray(y[:32])


@pytest.fixture(scope='module')
def l2_report(model):
  params, x, y = model
  # PGD-10 for the ordering check (PGD-3 of step ε/4 cannot reach the ball's edge).
  return evaluate(mlp_apply, params, {}, x, y, eps=EPS, norm='L2', eps_sweep=True,
                  **{**SMALL, 'check_pgd_steps': 10})


def l2_norms(v):
  return np.sqrt((np.asarray(v, np.float64).reshape(len(v), -1) ** 2).sum(axis=1))


@pytest.mark.slow  # AutoAttack-standard under L2 on a trained model
def test_aa_standard_under_l2_stays_in_the_l2_ball_and_box(l2_report, model):
  params, x, _ = model
  r = l2_report
  assert r['norm'] == 'L2' and r['attacks'] == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
  assert r['clean_accuracy'] > 0.9 and r['robust_accuracy'] < r['clean_accuracy']
  assert l2_norms(r['x_adv'] - x).max() <= EPS + 1e-5
  assert 0 <= r['x_adv'].min() and r['x_adv'].max() <= 1
  # The L∞ distance exceeds ε/6 somewhere: the examples use the L2 ball, not an L∞ box.
  assert np.abs(r['x_adv'] - x).max() > EPS / 6
  validity = r['checks']['validity']
  assert validity['status'] == sanity.PASS and validity['norm'] == 'L2'
  assert validity['max_l2'] <= EPS + 1e-5
  # The ε sweep in L2: {0, ε/2, ε, 2ε}, no ε = 1 point or rule.
  sweep = r['checks']['eps_sweep']
  assert sweep['eps'] == [0.0, EPS / 2, EPS, 2 * EPS] and 'does not apply' in sweep['message']
  assert sweep['accuracy'][0] == r['clean_accuracy']
  assert r['checks']['ordering']['status'] == sanity.PASS
  assert 'norm L2' in format_table(r)


def test_eps_sweep_rule_at_one_is_linf_only():
  falling = ([0.0, 0.5, 1.0], [0.9, 0.6, 0.4])
  assert sanity.check_eps_sweep(*falling)['status'] == sanity.WARN   # L∞: 0.4 at ε = 1
  assert sanity.check_eps_sweep(*falling, norm='L2')['status'] == sanity.PASS
  assert sanity.check_eps_sweep([0.0, 0.5], [0.5, 0.7], norm='L2')['status'] == sanity.WARN


def test_validity_is_measured_in_the_threat_models_norm():
  x = np.full((2, 4), 0.5, np.float32)
  x_adv = x + np.array([[0.3, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2]], np.float32)  # ‖·‖₂ .3, .4
  assert sanity.check_validity(x, x_adv, 0.35, 'L2')['outside_ball'] == 1
  assert sanity.check_validity(x, x_adv, 0.35)['outside_ball'] == 0   # L∞: .3, .2


def test_l2_eps_zero_is_clean_and_l2_radius_may_exceed_one(model):
  params, x, y = model
  zero = evaluate(mlp_apply, params, {}, x, y, eps=0.0, norm='L2', checks=False, **SMALL)
  assert zero['robust_accuracy'] == zero['clean_accuracy']
  big = evaluate(mlp_apply, params, {}, x, y, eps=3.0, norm='L2', suite='custom',
                 attacks=['apgd-ce'], checks=False, **SMALL)
  assert big['robust_accuracy'] < zero['robust_accuracy']
  with pytest.raises(ValueError, match='outside'):
    evaluate(mlp_apply, params, {}, x, y, eps=3.0, checks=False, **SMALL)   # L∞ ε > 1


def test_l2_fgsm_level_is_one_normalised_gradient_step(model):
  params, x, y = model
  r = evaluate(mlp_apply, params, {}, x, y, eps=EPS, norm='L2', suite='custom', attacks=['fgsm'],
               checks=False, **SMALL)
  moved = l2_norms(r['x_adv'] - x)
  # Each broken point moved by one step of length ε (less where the box cut it).
  assert moved.max() <= EPS + 1e-5 and moved.max() > 0.9 * EPS


@pytest.mark.slow  # AutoAttack's plus version: 5 restarts of every attack
@pytest.mark.parametrize('norm, eps', [('Linf', 0.1), ('L2', EPS)])
def test_aa_plus_runs_autoattacks_plus_version(model, norm, eps):
  params, x, y = model
  r = evaluate(mlp_apply, params, {}, x, y, suite='aa_plus', eps=eps, norm=norm, checks=False,
               **SMALL)
  assert r['attacks'] == ['apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t']
  s = r['settings']
  assert (s['apgd_restarts'], s['fab_restarts'], s['apgd_t_restarts'], s['fab_t_restarts']) == (
      5, 5, 1, 1)
  curve = [r['clean_accuracy']] + list(r['robust_accuracy_by_attack'].values())
  assert curve == sorted(curve, reverse=True) and curve[-1] == r['robust_accuracy']
  # Untargeted FAB: 5 restarts × 5 steps, one backward per class (10) per step and point.
  robust = {k: round(v * len(x)) for k, v in r['robust_accuracy_by_attack'].items()}
  fab_backward = r['passes']['fab']['backward']
  assert fab_backward == 5 * 5 * 10 * robust['apgd-dlr'] or robust['apgd-dlr'] == 0
  # Restarts set explicitly win over the suite's defaults.
  assert suite_options('aa_plus', {'apgd_restarts': 2}, 10).apgd_restarts == 2


def test_individual_mode_attacks_every_point(model):
  params, x, y = model
  kw = dict(eps=EPS, norm='L2', checks=False, **SMALL)
  chained = evaluate(mlp_apply, params, {}, x, y, **kw)
  alone = evaluate(mlp_apply, params, {}, x, y, individual=True, **kw)
  each = alone['robust_accuracy_individual']
  assert list(each) == chained['attacks'] and alone['individual'] is True
  # The first attack starts from the clean points either way: the same run, the same number.
  assert each['apgd-ce'] == chained['robust_accuracy_by_attack']['apgd-ce']
  # Every attack alone keeps at least the worst case over all; the worst case is their
  # per-point minimum, so it is no higher than the best single attack.
  assert alone['robust_accuracy'] <= min(each.values())
  assert all(v >= alone['robust_accuracy'] for v in each.values())
  # Each attack ran on all clean-correct points: as many as APGD-CE (not only its survivors).
  correct = round(alone['clean_accuracy'] * len(x))
  assert alone['passes']['square']['forward'] >= correct
  assert 'alone' in format_table(alone)


def wiggly_noisy_problem():
  """A randomised linear model f(x + r), r ~ U(±0.15): points near the boundary flip between
  draws, so single draws and the per-draw mean disagree."""
  x, _ = toy_data(jax.random.key(30), 48, classes=4, shape=(8,), noise=0.05)
  w = jax.random.normal(jax.random.key(31), (8, 4))
  apply = lambda params, state, x, train: (x.reshape(len(x), -1) @ params['w'], state, {})
  return with_input_noise(apply, 0.15), {'w': w}, np.asarray(x), np.asarray((x @ w).argmax(-1))


@pytest.mark.slow
def test_randomised_model_is_scored_two_ways_and_both_are_named():
  noisy, params, x, y = wiggly_noisy_problem()
  r = evaluate(noisy, params, {}, x, y, suite='aa_rand', eps=0.05, randomized=True,
               apgd_steps=5, eot_samples=4, n_draws=50, checks=False, progress=False)
  rule = r['autoattack_rand_rule']
  per_draw = r['robust_accuracy']
  assert 'expected per-draw' in r['robust_accuracy_definition']
  assert "'rand'" in rule['definition'] and 'one draw' in rule['definition']
  # Any single misclassifying draw breaks a point: a stricter count than the per-draw mean.
  assert rule['robust_accuracy'] < per_draw - 0.05
  assert rule['robust_accuracy'] <= rule['clean_accuracy']
  assert list(rule['robust_accuracy_by_attack']) == ['apgd-ce', 'apgd-dlr']
  assert rule['robust_accuracy_by_attack']['apgd-dlr'] == rule['robust_accuracy']
  table = format_table(r)
  assert f'expected per-draw robust accuracy {per_draw:.4f}' in table
  assert f"AutoAttack 'rand' rule (broken if any single draw misclassifies) robust accuracy " \
         f"{rule['robust_accuracy']:.4f}" in table
  entry = robustbench_entry(r, dataset='cifar10', architecture='linear')
  assert entry['autoattack_acc'] == f"{100 * rule['robust_accuracy']:.2f}"
  assert 'Randomised model' in entry['footnote']


@pytest.mark.slow  # AutoAttack-standard under L2 on a trained model
def test_deterministic_reports_have_no_rand_rule(l2_report):
  assert 'autoattack_rand_rule' not in l2_report
  assert "'rand' rule" not in format_table(l2_report)


@pytest.mark.slow  # AutoAttack-standard under L2 on a trained model
def test_robustbench_entry(l2_report):
  assert eps_string(8 / 255) == '8/255' and eps_string(4 / 255) == '4/255'
  assert eps_string(0.031) == '0.031' and eps_string(0.5, 'L2') == '0.5'
  entry = robustbench_entry(l2_report, dataset='cifar10', architecture='PreActResNet-18',
                            name='A paper', venue='ICLR 2020', reported=50.0)
  assert (entry['eps'], entry['threat_model'], entry['number_forward_passes']) == ('0.5', 'L2', 1)
  assert entry['clean_acc'] == f"{100 * l2_report['clean_accuracy']:.2f}"
  assert entry['autoattack_acc'] == f"{100 * l2_report['robust_accuracy']:.2f}"
  assert entry['reported'] == '50.00' and entry['name'] == 'A paper'
  # Short attacks are not AutoAttack's: flagged, and named in the footnote.
  assert entry['unreliable'] is True and 'apgd_steps=5' in entry['footnote']
  assert '32 test points (RobustBench uses 10000)' in entry['footnote']
  reference = {**l2_report, 'settings': {**l2_report['settings'], **{
      k: v for k, v in vars(suite_options('aa_standard', {}, 10)).items()}}}
  checked = robustbench_entry(reference, dataset='cifar10', architecture='x')
  assert checked['unreliable'] is False and 'differ' not in checked['footnote']
  with pytest.raises(ValueError, match='AutoAttack'):
    robustbench_entry({**l2_report, 'suite': 'pgd'}, dataset='cifar10', architecture='x')


def test_bad_l2_requests_fail_clearly(model):
  params, x, y = model
  with pytest.raises(ValueError, match='norm'):
    evaluate(mlp_apply, params, {}, x, y, eps=EPS, norm='L1', **SMALL)
  with pytest.raises(ValueError, match='5 × 5'):
    evaluate(mlp_apply, init_mlp(jax.random.key(0), 16), {}, x[:, :4, :4], y, eps=EPS,
             norm='L2', **SMALL)


def test_training_refuses_l2_and_evaluation_accepts_it(tmp_path):
  config = default_config()
  config.eval.norm, config.eval.eps = 'L2', 2.0
  assert config_problems(config) == []          # --mode=eval: an L2 radius may exceed 1
  problems = config_problems(config, training=True)
  assert len(problems) == 1 and 'L∞ only' in problems[0] and 'eval.norm' in problems[0]
  with pytest.raises(ConfigError, match='L∞ only'):
    train_and_evaluate(config, str(tmp_path / 'run'))
  config.eval.norm = 'L1'
  assert any("use 'Linf' or 'L2'" in p for p in config_problems(config))
