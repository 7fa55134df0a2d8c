"""FGSM-MEP: the prior-guided step, the per-example state of a train step against a written-out
official sequence, the periodic reset, and checkpoints with per-example state."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from fat_jax import optim
from fat_jax.attacks.prior import prior_guided_step, prior_reset
from fat_jax.config import default_config
from fat_jax.data import DATASET_INFOS
from fat_jax.losses import smoothed_labels, soft_cross_entropy
from fat_jax.methods import init_examples, init_train_state, make_train_step, resolve_method
from fat_jax.models import build_model
from fat_jax.run.checkpoint import Checkpointer

EPS = 0.1


def test_prior_guided_step_by_hand():
  x = jnp.array([[0.5, 0.95, 0.02, 0.5]])
  prior = jnp.array([[0.05, 0.05, -0.05, 0.1]])
  momentum = jnp.array([[1.0, -1.0, 0.0, 0.0]])
  grad = jnp.array([[0.2, 0.1, -0.1, -0.6]])
  delta, next_prior, m = prior_guided_step(x, prior, momentum, grad, eps=EPS, alpha=0.08,
                                           decay=0.3)
  m_hand = grad / 1.0 + 0.3 * momentum      # ‖g‖₁ = 1
  np.testing.assert_allclose(m, m_hand, rtol=1e-6)
  # δ = box(Π_ε(P + α·sign g)): 0.13 → 0.1; 0.13 → 0.05 (box at 1); −0.13 → −0.02 (box at 0).
  np.testing.assert_allclose(delta, [[0.1, 0.05, -0.02, 0.02]], atol=1e-6)
  # P' = box(Π_ε(P + α·sign M')), sign M' = (+, −, −, −).
  np.testing.assert_allclose(next_prior, [[0.1, -0.03, -0.02, 0.02]], atol=1e-6)
  fresh = np.unique(prior_reset(jax.random.key(0), (1000,), eps=EPS, alpha=0.08))
  np.testing.assert_allclose(fresh, [-0.08, 0.08], rtol=1e-6)
  clipped = np.unique(prior_reset(jax.random.key(0), (50,), eps=0.05, alpha=0.08))
  np.testing.assert_allclose(clipped, [-0.05, 0.05], rtol=1e-6)


def mep_config(**fields):
  c = default_config().method
  c.name = 'fgsm_mep'
  c.update(fields)
  return c


def tiny_problem():
  cfg = ml_collections.ConfigDict(dict(name='cnn', width=4, depth=2, batchnorm=True))
  model = build_model(cfg, DATASET_INFOS['fashion_mnist'])
  method = resolve_method(mep_config(mep=dict(reset_every=2)), EPS)
  examples = init_examples(method, 12, (28, 28, 1))
  state = init_train_state(model, jax.random.key(0), examples)
  k1, k2 = jax.random.split(jax.random.key(1))
  images = jax.random.randint(k1, (12, 28, 28, 1), 0, 256).astype(jnp.uint8)
  labels = jax.random.randint(k2, (12,), 0, 10)
  return model, method, state, images, labels


def manual_mep_step(model, ts, x, labels, prior, momentum, schedule, wd=5e-4):
  """FGSM_MEP.py's iteration written out (augmentation off): returns (params, δ, P', M')."""
  targets = smoothed_labels(labels, 10, 0.6)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)

  def start(params, d):
    logits, st, _ = model.apply(params, ts.batch_stats, x + d, True)
    return soft_cross_entropy(logits, targets).mean(), (logits, st)
  g, (_, st1) = jax.grad(start, argnums=1, has_aux=True)(ts.params, prior)
  m = g / jnp.abs(g).sum() + 0.3 * momentum
  box = lambda d: jnp.clip(x + jnp.clip(d, -EPS, EPS), 0, 1) - x
  delta = box(prior + EPS * jnp.sign(g))
  next_prior = box(prior + EPS * jnp.sign(m))

  def loss(params):
    logits0, _, _ = model.apply(params, ts.batch_stats, x + prior, True)  # not detached
    logits, st, _ = model.apply(params, st1, x + delta, True)
    return (soft_cross_entropy(logits, targets).mean()
            + 10 * jnp.mean((logits - logits0) ** 2)), st
  grads, _ = jax.grad(loss, has_aux=True)(ts.params)
  hyper = schedule(ts.step)  # torch SGD: w − lr·(μ·b + ∇ + wd·w)
  params = jax.tree.map(lambda w, b, g: w - hyper.lr * (hyper.momentum * b + g + wd * w),
                        ts.params, ts.opt_state.trace, grads)
  return params, delta, next_prior, m


def test_train_step_follows_the_official_sequence_and_keeps_per_example_state():
  model, method, ts, images, labels = tiny_problem()
  schedule = optim.Schedule('cyclic', lr_max=0.2, total_steps=8, steps_per_epoch=2)
  step = jax.jit(make_train_step(model, method, schedule, weight_decay=5e-4, augment_mode='none',
                                 key=jax.random.key(2)))
  one = jnp.asarray(1, jnp.int32)  # lr > 0, still reset period 0
  ts = ts._replace(step=one, opt_state=ts.opt_state._replace(count=one))
  batch = jnp.array([7, 2, 9, 4])
  x = images[batch].astype(jnp.float32) / 255
  after, metrics = step(ts, images[batch], labels[batch], batch)
  rows = after.examples
  # The first read draws the prior: ±min(α, ε) per pixel, momentum 0.
  prior0 = ts.examples['prior'][batch]
  assert not prior0.any()
  untouched = np.setdiff1d(np.arange(12), batch)
  assert np.all(np.asarray(rows['period'])[batch] == 0)
  assert np.all(np.asarray(rows['period'])[untouched] == -1)
  assert not np.asarray(rows['prior'])[untouched].any()
  # Re-run the first step by hand from the prior the step drew.
  step_key = jax.random.fold_in(jax.random.key(2), 1)
  _, init_key, _ = jax.random.split(step_key, 3)
  drawn = prior_reset(init_key, (4, 28, 28, 1), eps=EPS, alpha=EPS)
  params, delta, next_prior, m = manual_mep_step(model, ts, x, labels[batch], drawn,
                                                 jnp.zeros_like(drawn), schedule)
  np.testing.assert_allclose(rows['prior'][batch], next_prior, atol=1e-6)
  np.testing.assert_allclose(rows['momentum'][batch], m, rtol=1e-4, atol=1e-9)
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  assert np.isfinite(float(metrics['loss']))
  # The next step reads the stored prior (no reset) ...
  again, _ = step(after, images[batch], labels[batch], batch)
  assert np.all(np.asarray(again.examples['period'])[batch] == 0)
  assert not np.allclose(again.examples['prior'][batch], drawn)
  # ... and at the reset period (epoch 2 of reset_every = 2) P is drawn again and M restarts.
  late = again._replace(step=jnp.asarray(4, jnp.int32))
  reset, _ = step(late, images[batch], labels[batch], batch)
  assert np.all(np.asarray(reset.examples['period'])[batch] == 1)
  g_scale = np.abs(np.asarray(reset.examples['momentum'])[batch]).sum()
  assert abs(g_scale - 1.0) < 1e-3  # M' = g/‖g‖₁ + 0.3·0


def test_checkpoint_keeps_per_example_state_apart(tmp_path):
  model, _, ts, _, _ = tiny_problem()
  ts = ts._replace(examples={**ts.examples, 'prior': ts.examples['prior'] + 0.5})
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(1, ts)
  full = checkpointer.restore(1, ts)
  model_only = checkpointer.restore(1, init_train_state(model, jax.random.key(9)))
  checkpointer.close()
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(ts)):
    np.testing.assert_array_equal(a, b)
  assert model_only.examples == {}
  for a, b in zip(jax.tree.leaves(model_only.params), jax.tree.leaves(ts.params)):
    np.testing.assert_array_equal(a, b)


def test_checkpoints_written_before_per_example_state_restore(tmp_path):
  # The earlier layout: the state without `examples` as one unnamed orbax item.
  model, _, _, _, _ = tiny_problem()
  ts = init_train_state(model, jax.random.key(4))
  manager = ocp.CheckpointManager(str(tmp_path / 'checkpoints'))
  old_fields = ('step', 'params', 'batch_stats', 'opt_state')
  manager.save(3, args=ocp.args.StandardSave({k: getattr(ts, k) for k in old_fields}))
  manager.wait_until_finished()
  manager.close()
  checkpointer = Checkpointer(str(tmp_path))
  restored = checkpointer.restore(3, init_train_state(model, jax.random.key(5)))
  checkpointer.close()
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(ts)):
    np.testing.assert_array_equal(a, b)
