"""The torch SGD (an optax transformation), the schedules, and the optimiser state in
checkpoints."""
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fat_jax import optim
from fat_jax.methods import TrainState
from fat_jax.run.checkpoint import Checkpointer


def cyclic(total=100):
  return optim.Schedule('cyclic', lr_max=0.2, total_steps=total, steps_per_epoch=10)


@pytest.mark.parametrize('step, lr, momentum', [
    (0, 0.0, 0.9),          # torch CyclicLR: the first iteration runs with lr = 0
    (25, 0.1, 0.85),
    (50, 0.2, 0.8),         # peak: lr_max and base_momentum
    (75, 0.1, 0.85),
    (99, 0.004, 0.898),     # last iteration: x = 0.99, scale = 0.02
])
def test_cyclic_matches_torch_cycliclr(step, lr, momentum):
  hyper = cyclic()(step)
  np.testing.assert_allclose(float(hyper.lr), lr, atol=1e-7)
  np.testing.assert_allclose(float(hyper.momentum), momentum, atol=1e-7)


def test_piecewise_and_multistep():
  pw = optim.Schedule('piecewise', lr_max=0.1, total_steps=200, steps_per_epoch=10)  # 20 epochs
  assert [round(float(pw(s).lr), 6) for s in (0, 99, 100, 149, 150, 199)] == [
      0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
  ms = optim.Schedule('multistep', lr_max=0.1, total_steps=200, steps_per_epoch=10,
                      milestones=(5, 15), gamma=0.5)
  assert [round(float(ms(s).lr), 6) for s in (0, 49, 50, 149, 150)] == [
      0.1, 0.1, 0.05, 0.05, 0.025]
  assert float(ms(0).momentum) == pytest.approx(0.9)


@pytest.mark.parametrize('num_epochs', [3, 5, 7])
def test_piecewise_linear_is_gradalign_official_schedule(num_epochs):
  """`tml-epfl/understanding-fast-adv-training`: lr = np.interp([t], [0, E·2//5, E],
  [0, lr_max, 0])[0] with t = epoch − 1 + (i + 1)/len(batches) for epochs 1..E and batches i,
  SGD momentum 0.9 throughout; every step of a short run."""
  per_epoch, lr_max = 7, 0.3
  schedule = optim.Schedule('piecewise_linear', lr_max=lr_max, total_steps=num_epochs * per_epoch,
                            steps_per_epoch=per_epoch)
  step = 0
  for epoch in range(1, num_epochs + 1):
    for i in range(per_epoch):
      official = np.interp([epoch - 1 + (i + 1) / per_epoch], [0, num_epochs * 2 // 5, num_epochs],
                           [0, lr_max, 0])[0]
      hyper = schedule(step)
      np.testing.assert_allclose(float(hyper.lr), official, rtol=1e-6, atol=1e-7)
      assert float(hyper.momentum) == pytest.approx(0.9)
      step += 1
  # The peak: lr_max at the end of epoch ⌊2E/5⌋; the last iteration runs with lr = 0.
  assert float(schedule(num_epochs * 2 // 5 * per_epoch - 1).lr) == pytest.approx(lr_max)
  assert float(schedule(num_epochs * per_epoch - 1).lr) == pytest.approx(0.0, abs=1e-7)


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match='Unknown lr schedule'):
    optim.Schedule('cosine', lr_max=0.1, total_steps=10, steps_per_epoch=1)


def test_torch_sgd_is_torch_sgd_with_coupled_weight_decay_stepped_by_the_schedule():
  w = {'a': jnp.array([1.0, -2.0])}
  g1, g2 = {'a': jnp.array([0.5, 0.5])}, {'a': jnp.array([-1.0, 2.0])}
  schedule, wd = cyclic(total=4), 0.01       # iterations 1, 2: lr 0.1, 0.2; μ 0.85, 0.8
  tx = optim.torch_sgd(schedule, wd)
  state = tx.init(w)
  chex.assert_trees_all_equal(state, optim.TorchSGDState(jnp.asarray(0), {'a': jnp.zeros(2)}))
  state = state._replace(count=jnp.asarray(1, jnp.int32))
  u1, state = tx.update(g1, state, w)
  w1 = optax.apply_updates(w, u1)
  d1 = np.array([0.5, 0.5]) + wd * np.array([1.0, -2.0])   # b₁ = d₁ (torch's first step)
  np.testing.assert_allclose(state.trace['a'], d1, rtol=1e-6)
  np.testing.assert_allclose(w1['a'], np.array([1.0, -2.0]) - 0.1 * d1, rtol=1e-6)
  u2, state = tx.update(g2, state, w1)
  w2 = optax.apply_updates(w1, u2)
  d2 = np.array([-1.0, 2.0]) + wd * np.asarray(w1['a'])
  np.testing.assert_allclose(state.trace['a'], 0.8 * d1 + d2, rtol=1e-6)
  np.testing.assert_allclose(w2['a'], np.asarray(w1['a']) - 0.2 * (0.8 * d1 + d2), rtol=1e-6)
  assert int(state.count) == 3
  with pytest.raises(ValueError, match='params'):
    tx.update(g1, state)


class MomentumLayoutState(NamedTuple):
  """A train state as checkpoints stored it before the optax state: momentum buffers only."""
  step: jax.Array
  params: dict
  batch_stats: dict
  momentum: dict
  examples: dict = {}


def test_checkpoints_of_the_momentum_layout_restore_into_the_torch_sgd_state(tmp_path):
  params = {'w': jnp.arange(3.0)}
  old = MomentumLayoutState(jnp.asarray(5, jnp.int32), params, {}, {'w': jnp.array([1., 2, 3])})
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(1, old)
  like = TrainState(jnp.zeros((), jnp.int32), params, {}, optim.init_torch_sgd(params))
  restored = checkpointer.restore(1, like)
  checkpointer.close()
  chex.assert_trees_all_equal(restored, TrainState(old.step, params, {}, optim.TorchSGDState(
      old.step, old.momentum)))


def test_the_logged_lr_and_momentum_are_the_optimisers():
  params = {'w': jnp.ones(3)}
  grads = {'w': jnp.full(3, 0.5)}
  schedule = cyclic()
  lr = optax.linear_schedule(0.1, 0.0, transition_steps=10)

  def after(tx, updates):
    """The state after `updates` updates, and what is logged for the last."""
    state = tx.init(params)
    for _ in range(updates):
      _, state = tx.update(grads, state, params)
    return {k: round(float(v), 6) for k, v in
            optim.logged_hyperparams(state, schedule, updates - 1).items()}

  adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=5e-4)
  assert after(adamw, 1) == {'lr': 0.1, 'momentum': 0.9}  # the rate of the update taken
  assert after(adamw, 3) == {'lr': 0.08, 'momentum': 0.9}
  sgd = optax.chain(optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=1.0),
                    optax.inject_hyperparams(optax.sgd)(learning_rate=0.5, momentum=0.8))
  assert after(sgd, 2) == {'lr': 0.5, 'momentum': 0.8}
  assert after(optax.adamw(1e-3), 2) == {}  # the rate is in no state: nothing logged
  torch = {k: round(float(v), 6) for k, v in schedule(25)._asdict().items()}
  assert after(optim.torch_sgd(schedule, 5e-4), 26) == torch == {'lr': 0.1, 'momentum': 0.85}


def torch_cyclic(step, base_lr, max_lr, up, down, base_momentum=0.8, max_momentum=0.9):
  """torch ``CyclicLR`` (mode 'triangular', cycle_momentum) at ``last_epoch`` = step, written
  out in NumPy double precision as ``torch/optim/lr_scheduler.py`` computes it."""
  total = float(up) + float(down)
  ratio = float(up) / total
  cycle = np.floor(1 + step / total)
  x = 1.0 + step / total - cycle
  scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
  return (base_lr + (max_lr - base_lr) * scale,
          max_momentum - (max_momentum - base_momentum) * scale)


@pytest.mark.parametrize('total', [105, 37, 8595])
def test_uneven_cyclic_is_torch_cycliclr_with_step_size_up_two_fifths(total):
  """AAER's ``SVHN/AAER.py``: ``CyclicLR(opt, base_lr=0, max_lr=0.05, step_size_up=T·2/5,
  step_size_down=T·3/5)`` (T = 15 epochs × 573 batches = 8595 there), every iteration."""
  schedule = optim.Schedule('cyclic', lr_max=0.05, total_steps=total, steps_per_epoch=7,
                            cycle_up=0.4)
  steps = np.arange(total)
  ours = jax.jit(jax.vmap(schedule))(steps)
  official = np.array([torch_cyclic(t, 0.0, 0.05, total * 2 / 5, total * 3 / 5) for t in steps])
  np.testing.assert_allclose(ours.lr, official[:, 0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ours.momentum, official[:, 1], rtol=1e-6, atol=1e-7)
  peak = int(np.argmax(official[:, 0]))
  assert int(np.argmax(np.asarray(ours.lr))) == peak == round(total * 2 / 5)


def test_default_cycle_is_the_even_cycle_bit_for_bit_and_bad_fractions_are_refused():
  """cycle_up = 0.5 (the default) computes what the even cycle computed, in the same float32
  operations: the recipes on ``step_size_up=T/2`` keep their bits."""
  def even(step):
    step = jnp.asarray(step, jnp.float32)
    x = 1 + step / 100 - jnp.floor(1 + step / 100)
    scale = jnp.where(x <= 0.5, x / 0.5, (x - 1) / (0.5 - 1))
    return optim.Hyper(0.2 * scale, 0.9 - (0.9 - 0.8) * scale)

  steps = np.arange(100)
  chex.assert_trees_all_equal(jax.jit(jax.vmap(cyclic()))(steps), jax.jit(jax.vmap(even))(steps))
  official = np.array([torch_cyclic(t, 0.0, 0.2, 50, 50) for t in steps])
  np.testing.assert_allclose(jax.vmap(cyclic())(steps).lr, official[:, 0], rtol=1e-6, atol=1e-7)
  for bad in (0.0, 1.0, -0.2):
    with pytest.raises(ValueError, match='cycle_up'):
      optim.Schedule('cyclic', lr_max=0.2, total_steps=10, steps_per_epoch=1, cycle_up=bad)
  with pytest.raises(ValueError, match="cyclic schedule only, not 'piecewise'"):
    optim.Schedule('piecewise', lr_max=0.2, total_steps=10, steps_per_epoch=1, cycle_up=0.4)
