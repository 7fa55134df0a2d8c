"""Fidelity of LAP, AAER and GradAlign against hand computation (docs/protocol.md §2.1–2.3)."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fat_jax import optim
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS
from fat_jax.losses import cross_entropy
from fat_jax.losses.aaer import aaer_regularizer
from fat_jax.losses.gradalign import cosine_alignment, gradalign_lambda, gradalign_regularizer
from fat_jax.methods import TrainState, init_train_state, make_train_step, resolve_method
from fat_jax.models import build_model
from fat_jax.weight_perturbation import lap_layer_factors

PUBLISHED_LAMBDAS = [1.000, 0.359, 0.264, 0.210, 0.174, 0.147, 0.126, 0.108, 0.093, 0.080, 0.069,
                0.059, 0.050, 0.042, 0.035, 0.028, 0.021, 0.016, 0.010, 0.005, 0.000]


def test_lap_layer_factors_match_the_published_table():
  np.testing.assert_allclose(lap_layer_factors(21, 0.3), PUBLISHED_LAMBDAS, atol=6e-4)
  assert lap_layer_factors(1, 0.3).tolist() == [1.0]


def method_config(name, **fields):
  c = default_config().method
  c.name = name
  c.update(fields)
  return c


@pytest.mark.parametrize('fields, match', [
    (dict(name='lap'), 'lap.beta'),
    (dict(name='aaer'), 'aaer.lambda'),
    (dict(name='n_fgsm', aaer=dict(lambda1=1.0)), 'all of'),
    (dict(name='pgd_at', lap=dict(beta=0.1)), 'single-step'),
])
def test_incomplete_or_incompatible_components_are_rejected(fields, match):
  with pytest.raises(ValueError, match=match):
    resolve_method(method_config(**fields), 8 / 255)


def test_components_compose_and_gradalign_lambda_rule():
  m = resolve_method(method_config('n_fgsm', lap=dict(beta=0.001),
                                   aaer=dict(lambda1=1.0, lambda2=1.5, lambda3=0.15)), 8 / 255)
  assert m.lap.beta == 0.001 and m.aaer.lambda3 == 0.15 and m.gradalign is None
  assert m.attack.init_scale == 2.0 and not m.attack.project
  g = resolve_method(method_config('gradalign'), 16 / 255)
  assert g.gradalign.lam == pytest.approx(2.0) and gradalign_lambda(8 / 255) == pytest.approx(0.2)


# ----------------------------------------------------------------------------- LAP


@pytest.fixture(scope='module')
def tiny():
  cfg = ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2, batchnorm=True))
  model = build_model(cfg, DATASET_INFOS['fashion_mnist'])
  state = init_train_state(model, jax.random.key(0))
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  momentum = jax.tree.map(lambda w: 0.1 * jax.random.normal(k3, w.shape), state.params)
  images = jax.random.randint(k1, (8, 28, 28, 1), 0, 256).astype(jnp.uint8)
  labels = jax.random.randint(k2, (8,), 0, 10)
  step = jnp.asarray(7, jnp.int32)
  ts = state._replace(step=step, opt_state=optim.TorchSGDState(step, momentum))
  return model, ts, images, labels, jnp.arange(8)


def manual_lap_step(model, ts, images, labels, key, *, eps, beta, gamma, schedule, wd):
  """LAP as the official loop does it, written out: N-LAP (U(−2ε, 2ε), α = ε, no clamp)."""
  aug_key, init_key, _ = jax.random.split(jax.random.fold_in(key, ts.step), 3)
  del aug_key  # augment 'none': x = images / 255
  x = images.astype(jnp.float32) / 255
  eta = jax.random.uniform(init_key, x.shape, x.dtype, -2 * eps, 2 * eps)
  eta = jnp.clip(x + eta, 0, 1) - x

  def loss0(params, eta):
    logits, st, _ = model.apply(params, ts.batch_stats, x + eta, True)
    return cross_entropy(logits, labels).mean(), st
  (g_w, g_eta), state1 = jax.grad(loss0, argnums=(0, 1), has_aux=True)(ts.params, eta)
  hyper = schedule(ts.step)
  lr, mu = float(hyper.lr), float(hyper.momentum)
  # Proxy step on copies, then "rollback" (we simply keep the originals).
  paths = model.weight_layer_order(ts.params)
  factors = 1 - (np.log(np.arange(1, len(paths) + 1)) / np.log(len(paths))) ** gamma
  perturbed = jax.tree.map(lambda w: w, ts.params)
  for (layer, name), lam in zip(paths, factors):
    w = ts.params[layer][name]
    b_new = mu * ts.opt_state.trace[layer][name] + g_w[layer][name] + wd * w
    d = -lr * b_new
    u = jnp.linalg.norm(w) * d / (jnp.linalg.norm(d) + 1e-20)
    perturbed[layer] = {**perturbed[layer], name: w + beta * lam * u}
  delta = jnp.clip(x + eta + eps * jnp.sign(g_eta), 0, 1) - x

  def loss1(params):
    logits, st, _ = model.apply(params, state1, x + delta, True)
    return cross_entropy(logits, labels).mean(), st
  grads, state2 = jax.grad(loss1, has_aux=True)(perturbed)
  momentum = jax.tree.map(lambda b, g, w: mu * b + g + wd * w, ts.opt_state.trace, grads,
                          perturbed)
  params = jax.tree.map(lambda w, b: w - lr * b, perturbed, momentum)
  return TrainState(ts.step + 1, params, state2, optim.TorchSGDState(ts.step + 1, momentum))


def test_lap_step_equals_the_manual_sequence_and_accumulates(tiny):
  model, ts, images, labels, indices = tiny
  eps, beta, gamma, wd = 0.1, 0.5, 0.3, 5e-4
  method = resolve_method(method_config('lap', lap=dict(beta=beta, gamma=gamma)), eps)
  schedule = optim.Schedule('cyclic', lr_max=0.2, total_steps=40, steps_per_epoch=10)
  key = jax.random.key(5)
  step = jax.jit(make_train_step(model, method, schedule, weight_decay=wd, augment_mode='none',
                                 key=key))
  ours, manual = ts, ts
  for _ in range(2):  # the perturbation of step 1 stays in the weights of step 2
    ours, metrics = step(ours, images, labels, indices)
    manual = manual_lap_step(model, manual, images, labels, key, eps=eps, beta=beta,
                             gamma=gamma, schedule=schedule, wd=wd)
    chex.assert_trees_all_close(ours, manual, rtol=2e-4, atol=2e-6)
  assert metrics['lap_norm'].shape == (len(model.weight_layer_order(ts.params)),)
  assert float(metrics['lap_norm'][0]) > 0 and float(metrics['lap_norm'][-1]) == 0.0
  # Without LAP the same step gives different weights: the perturbation matters.
  plain = make_train_step(model, resolve_method(method_config('n_fgsm'), eps), schedule,
                          weight_decay=wd, augment_mode='none', key=key)(ts, images, labels,
                                                                         indices)[0]
  lap = step(ts, images, labels, indices)[0]
  assert not np.allclose(plain.params['conv0']['kernel'], lap.params['conv0']['kernel'])


def test_lap_and_awp_take_any_optax_optimiser(tiny):
  """LAP's proxy step is the optimiser's own update (here AdamW's) on copies; AWP steps at w + v
  and removes v."""
  model, ts, images, labels, indices = tiny
  eps, beta, gamma, key = 0.1, 0.5, 0.3, jax.random.key(5)
  tx = optax.adamw(1e-2, weight_decay=1e-3)
  ts = ts._replace(opt_state=tx.init(ts.params))
  schedule = optim.Schedule('constant', lr_max=1e-2, total_steps=40, steps_per_epoch=10)

  def step(method):
    return jax.jit(make_train_step(model, method, schedule, tx=tx, augment_mode='none',
                                   key=key))(ts, images, labels, indices)

  after, metrics = step(resolve_method(method_config('lap', lap=dict(beta=beta, gamma=gamma)), eps))
  # By hand: N-FGSM's start point, AdamW's update there as the LAP direction, the step at the
  # perturbed weights from the same AdamW state.
  _, init_key, _ = jax.random.split(jax.random.fold_in(key, ts.step), 3)
  x = images.astype(jnp.float32) / 255
  eta = jnp.clip(x + jax.random.uniform(init_key, x.shape, x.dtype, -2 * eps, 2 * eps), 0, 1) - x
  loss = lambda p, z, s: (lambda o: (cross_entropy(o[0], labels).mean(), o[1]))(
      model.apply(p, s, z, True))
  (g_w, g_eta), state1 = jax.grad(loss, argnums=(0, 1), has_aux=True)(ts.params, x + eta,
                                                                     ts.batch_stats)
  direction = tx.update(g_w, ts.opt_state, ts.params)[0]
  paths = model.weight_layer_order(ts.params)
  perturbed = ts.params
  for (layer, name), lam in zip(paths, lap_layer_factors(len(paths), gamma)):
    w, d = ts.params[layer][name], direction[layer][name]
    perturbed = {**perturbed, layer: {**perturbed[layer], name: w + beta * lam * jnp.linalg.norm(
        w) * d / (jnp.linalg.norm(d) + 1e-20)}}
  x_adv = x + (jnp.clip(x + eta + eps * jnp.sign(g_eta), 0, 1) - x)
  grads, state2 = jax.grad(loss, has_aux=True)(perturbed, x_adv, state1)
  updates, opt_state = tx.update(grads, ts.opt_state, perturbed)
  chex.assert_trees_all_close(after.params, optax.apply_updates(perturbed, updates), rtol=2e-4,
                              atol=2e-6)
  chex.assert_trees_all_close(after.batch_stats, state2, rtol=2e-4, atol=2e-6)
  chex.assert_trees_all_close(after.opt_state, opt_state, rtol=2e-4, atol=2e-6)
  assert float(metrics['lap_norm'][0]) > 0
  plain = step(resolve_method(method_config('n_fgsm'), eps))[0]
  assert not np.allclose(plain.params['conv0']['kernel'], after.params['conv0']['kernel'])
  # AWP on N-FGSM with AdamW: one Adam update, taken at w + v.
  awp, metrics = step(resolve_method(method_config('n_fgsm', awp=dict(gamma=0.01)), eps))
  assert float(metrics['awp_norm']) > 0 and int(awp.opt_state[0].count) == 1
  assert not np.allclose(plain.params['conv0']['kernel'], awp.params['conv0']['kernel'])


# ---------------------------------------------------------------------------- AAER

LOGITS_INIT = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 3.0]])
LOGITS_ADV = jnp.array([[5.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 3.0], [0.0, 1.0, 0.5]])
LABELS = jnp.array([0, 1, 2, 2])
LAMBDAS = dict(lambda1=1.0, lambda2=2.5, lambda3=1.5)


def ce_np(z, y):
  z = np.asarray(z, np.float64)
  return np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), np.asarray(y)]


def test_aaer_statistics_against_hand_values():
  before, after = ce_np(LOGITS_INIT, LABELS), ce_np(LOGITS_ADV, LABELS)
  abnormal = before > after
  assert abnormal.tolist() == [True, False, True, False]
  var = ((np.asarray(LOGITS_INIT) - np.asarray(LOGITS_ADV)) ** 2).sum(1)
  v_a, v_n = var[abnormal].mean(), var[~abnormal].mean()
  c_a = (before - after)[abnormal].mean()
  expected = 1.0 * 0.5 * (2.5 * c_a + 1.5 * max(v_a - v_n, 0))
  reg, stats = aaer_regularizer(LOGITS_INIT, LOGITS_ADV, LABELS, **LAMBDAS)
  np.testing.assert_allclose(
      [stats.aae_fraction, stats.loss_variation, stats.abnormal_variation,
       stats.normal_variation, reg], [0.5, c_a, v_a, v_n, expected], rtol=1e-5)


@pytest.mark.parametrize('rows', [[1, 3], [0, 2]])  # all normal (m = 0); all abnormal (m = n)
def test_aaer_is_zero_unless_some_but_not_all_are_abnormal(rows):
  idx = jnp.array(rows)
  reg, stats = aaer_regularizer(LOGITS_INIT[idx], LOGITS_ADV[idx], LABELS[idx], **LAMBDAS)
  assert float(reg) == 0.0 and float(stats.aae_fraction) in (0.0, 1.0)


def test_aaer_loss_variation_term_has_no_gradient_unless_switched_on():
  def c_term(adv, switch):
    return aaer_regularizer(LOGITS_INIT, adv, LABELS, lambda1=1.0, lambda2=1.0, lambda3=0.0,
                            differentiable_loss_variation=switch)[0]
  assert float(jnp.abs(jax.grad(c_term)(LOGITS_ADV, False)).max()) == 0.0
  g = np.asarray(jax.grad(c_term)(LOGITS_ADV, True))
  assert np.abs(g).max() > 0 and np.abs(g[[1, 3]]).max() == 0.0  # rows in A only
  # The λ3 term trains through the adversarial logits of the abnormal examples only.
  v = np.asarray(jax.grad(lambda adv: aaer_regularizer(LOGITS_INIT, adv, LABELS, **LAMBDAS)[0])(
      LOGITS_ADV))
  assert np.abs(v[[0, 2]]).max() > 0 and np.abs(v[[1, 3]]).max() == 0.0


def official_cyclic(step, total, lr_max, up=2 / 5):
  """torch ``CyclicLR(base_lr=0, max_lr, step_size_up=T·up, step_size_down=T·(1 − up))``'s lr
  and momentum (0.9 → 0.8) at ``last_epoch`` = step, in double precision."""
  size_up, size_down = total * up, total * (1 - up)
  ratio = size_up / (size_up + size_down)
  x = 1.0 + step / (size_up + size_down) - np.floor(1 + step / (size_up + size_down))
  scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
  return lr_max * scale, 0.9 - 0.1 * scale


def manual_svhn_aaer_step(model, ts, images, labels, key, *, eps, alpha, init_scale, clamp,
                          lambdas, total, per_epoch, lr_max, wd):
  """One iteration of `tmllab/2023_NeurIPS_AAER` ``SVHN/AAER.py`` written out (pixel units,
  augment 'none'): the start, the warmed-up step, the two train-mode forwards, the AAER term
  (C_A without gradient, ``.item()`` of V_N), the uneven cyclic lr and torch's SGD. Also returns
  the number of abnormal examples."""
  _, init_key, _ = jax.random.split(jax.random.fold_in(key, ts.step), 3)
  x = images.astype(jnp.float32) / 255
  eta = jax.random.uniform(init_key, x.shape, x.dtype, -init_scale * eps, init_scale * eps)
  eta = jnp.clip(x + eta, 0, 1) - x

  def forward(params, stats, inputs):
    logits, new_stats, _ = model.apply(params, stats, inputs, True)
    return logits, new_stats

  def start_loss(eta):
    logits, stats = forward(ts.params, ts.batch_stats, x + eta)
    return cross_entropy(logits, labels).mean(), (logits, stats)
  g_eta, (output_org, stats1) = jax.grad(start_loss, has_aux=True)(eta)
  loss_before = cross_entropy(output_org, labels)
  epoch, i = divmod(int(ts.step), per_epoch)
  warm_up = min((epoch + i / per_epoch) / 5, 1)
  delta = eta + alpha * jnp.sign(g_eta) * warm_up
  if clamp:
    delta = jnp.clip(delta, -eps * warm_up, eps * warm_up)
  delta = jnp.clip(x + delta, 0, 1) - x
  loss_after = cross_entropy(forward(ts.params, stats1, x + delta)[0], labels)
  abnormal = np.asarray(loss_before > loss_after)
  normal = ~abnormal
  count = int(abnormal.sum())
  l2_square = lambda a, b: ((a - b) ** 2).sum(1).mean(0)
  lambda1, lambda2, lambda3 = lambdas

  def loss_fn(params):
    output, stats = forward(params, stats1, x + delta)
    loss = cross_entropy(output, labels).mean()
    if count and normal.any():
      abnormal_ce = (loss_before - loss_after)[abnormal].sum() / count
      abnormal_variation = l2_square(output_org[abnormal], output[abnormal])
      normal_variation = jax.lax.stop_gradient(l2_square(output_org[normal], output[normal]))
      loss = loss + (lambda1 * count / len(labels)) * (
          lambda2 * abnormal_ce + lambda3 * jnp.maximum(abnormal_variation - normal_variation, 0))
    return loss, stats
  grads, stats2 = jax.grad(loss_fn, has_aux=True)(ts.params)
  lr, mu = official_cyclic(int(ts.step), total, lr_max)
  momentum = jax.tree.map(lambda b, g, w: mu * b + g + wd * w, ts.opt_state.trace, grads,
                          ts.params)
  params = jax.tree.map(lambda w, b: w - lr * b, ts.params, momentum)
  return TrainState(ts.step + 1, params, stats2, optim.TorchSGDState(ts.step + 1, momentum)), count


@pytest.mark.parametrize('variant', ['n', 'rs'])
def test_svhn_aaer_recipe_equals_the_official_loop_with_warm_up_and_uneven_cycle(tiny, variant):
  """configs/aaer_svhn.py's method and schedule (λ 1, 4, 1.5; warm-up over 5 epochs; lr peak
  at 2/5) against the written-out official iterations 9, 10, 11 of a 10-epoch run of 2 batches
  per epoch: w = 0.9, 1, 1 (capped), on the down slope of the cycle."""
  from fat_jax.recipes import aaer_svhn_config
  model, ts, images, labels, indices = tiny
  config, eps, per_epoch, epochs = aaer_svhn_config(variant), 16 / 255, 2, 10
  method = resolve_method(config.method, eps)
  assert method.attack.warmup_epochs == 5.0 and config.optim.cycle_up == 0.4
  schedule = optim.Schedule('cyclic', lr_max=config.optim.lr_max,
                            total_steps=epochs * per_epoch, steps_per_epoch=per_epoch,
                            cycle_up=config.optim.cycle_up)
  key, wd = jax.random.key(3), config.optim.weight_decay
  step = jax.jit(make_train_step(model, method, schedule, weight_decay=wd, augment_mode='none',
                                 key=key))
  start = jnp.asarray(9, jnp.int32)
  # Weights × 10: a network sharp enough that the step lowers some examples' loss (AAEs).
  ours = ts._replace(step=start, params=jax.tree.map(lambda w: 10 * w, ts.params),
                     opt_state=optim.TorchSGDState(start, ts.opt_state.trace))
  manual, counts = ours, []
  for _ in range(3):
    ours, metrics = step(ours, images, labels, indices)
    manual, count = manual_svhn_aaer_step(
        model, manual, images, labels, key, eps=eps, alpha=method.attack.alpha,
        init_scale=method.attack.init_scale, clamp=method.attack.project,
        lambdas=(1.0, 4.0, 1.5), total=epochs * per_epoch, per_epoch=per_epoch,
        lr_max=config.optim.lr_max, wd=wd)
    chex.assert_trees_all_close(ours, manual, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics['aaer_aae_fraction']), count / len(labels))
    counts.append(count)
  assert any(0 < c < len(labels) for c in counts), counts  # the AAER term was on


def test_attack_step_warm_up_values_and_refusals():
  """w = min((epoch + i/L)/W, 1) at batch i of epoch `epoch` (L = 4 batches, W = 5); the
  warm-up reads on single-step attacks from a zero/uniform/normal start only."""
  from fat_jax.methods.records import Clock
  from fat_jax.methods.spec import unread_fields
  from fat_jax.methods.training_attacks import step_warmup
  steps = jnp.arange(24)
  w = jax.vmap(lambda t: step_warmup(Clock(t, 4, 6), 5.0))(steps)
  np.testing.assert_allclose(w, [min((t // 4 + (t % 4) / 4) / 5, 1) for t in range(24)],
                             rtol=1e-7)
  assert float(w[0]) == 0.0 and float(w[20]) == 1.0
  with pytest.raises(ValueError, match='alpha_warmup_epochs must be'):
    resolve_method(method_config('n_fgsm', alpha_warmup_epochs=-1.0), 8 / 255)
  pgd = method_config('pgd_at', alpha_warmup_epochs=5.0)
  assert unread_fields(pgd, resolve_method(pgd, 8 / 255), default_config().method) == [
      'method.alpha_warmup_epochs=5.0 does nothing without a single-step attack from a '
      'zero/uniform/normal start.']
  assert resolve_method(method_config('n_fgsm'), 8 / 255).attack.warmup_epochs == 0.0


# ----------------------------------------------------------------------- GradAlign


def test_cosine_alignment_against_numpy_and_zero_gradients_are_skipped():
  g1 = np.random.default_rng(0).normal(size=(4, 2, 2, 3)).astype(np.float32)
  g2 = np.random.default_rng(1).normal(size=(4, 2, 2, 3)).astype(np.float32)
  g2[3] = 0
  cos, valid = cosine_alignment(jnp.asarray(g1), jnp.asarray(g2))
  a, b = g1.reshape(4, -1), g2.reshape(4, -1)
  expected = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)
  np.testing.assert_allclose(np.asarray(cos)[:3], expected[:3], rtol=1e-5)
  assert np.asarray(valid).tolist() == [True, True, True, False]


def test_gradalign_gradient_matches_finite_differences():
  def apply_fn(params, state, x, train):
    h = jnp.tanh(x.reshape(len(x), -1) @ params['w1'])
    return h @ params['w2'], state, {}

  with jax.enable_x64(True):
    k = jax.random.split(jax.random.key(0), 4)
    params = {'w1': jax.random.normal(k[0], (12, 6), jnp.float64),
              'w2': jax.random.normal(k[1], (6, 3), jnp.float64)}
    x = jax.random.uniform(k[2], (5, 2, 2, 3), jnp.float64)
    y = jnp.array([0, 1, 2, 0, 1])
    g1 = jax.random.normal(k[3], x.shape, jnp.float64)

    def reg(p):
      return gradalign_regularizer(apply_fn, p, {}, x, y, jax.random.key(9), eps=0.1,
                                   grad_clean=g1, lam=0.7)[0]
    value = reg(params)
    assert 0.0 < float(value) < 1.4  # λ·(1 − mean cos) with cos ∈ [−1, 1]
    grad = jax.grad(reg)(params)['w1']
    direction = jax.random.normal(jax.random.key(3), params['w1'].shape, jnp.float64)
    h = 1e-6
    shifted = lambda s: reg({**params, 'w1': params['w1'] + s * h * direction})
    numeric = (shifted(1) - shifted(-1)) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(numeric), rtol=1e-5)
