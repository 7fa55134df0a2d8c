"""Square Attack: the p schedule, validity, query accounting, early stop."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.attacks import square_attack
from fat_jax.attacks.square import schedule_stage, square_sides
from tests.test_apgd import EPS, mlp_apply, untrained  # noqa: F401  (fixture)


def test_p_schedule_and_window_sides():
  queries = [0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000, 4001, 6000,
             6001, 8000, 8001]
  stages = [int(schedule_stage(i, 5000, False)) for i in queries]
  assert stages == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9]
  # Rescaled to 10 000: query i of 1000 counts as 10·i.
  assert [int(schedule_stage(i, 1000, True)) for i in (1, 2, 100, 101, 801)] == [0, 1, 4, 5, 9]
  # s = round(√(p·H·W)) with p = 0.8 / 2^stage on 32×32 images.
  assert square_sides(0.8, 32, 32).tolist() == [29, 20, 14, 10, 7, 5, 4, 3, 2, 1]


@functools.lru_cache
def square_jit(queries):
  return jax.jit(lambda params, x, y, eps: square_attack(mlp_apply, params, {}, x, y,
                                                         jax.random.key(3), eps=eps,
                                                         queries=queries))


def test_square_validity_queries_and_early_stop(untrained):  # noqa: F811
  params, x, y = untrained
  run = functools.partial(square_jit(40), params, x, y)
  clean_ok = np.asarray(mlp_apply(params, {}, x, False)[0].argmax(-1) == y)
  result = run(EPS)
  delta, used = result.delta, np.asarray(result.queries)
  assert float(jnp.abs(delta).max()) <= EPS + 1e-6
  assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
  wrong = np.asarray(mlp_apply(params, {}, x + delta, False)[0].argmax(-1) != y)
  assert not np.asarray(delta)[~clean_ok].any() and not used[~clean_ok].any()
  broken = clean_ok & wrong
  assert broken.any() and (clean_ok & ~wrong).any()
  assert np.all(used[clean_ok & ~wrong] == 41)       # the stripes + 40 proposals
  assert np.all(used[broken] <= 41)
  # ε = 0: nothing moves; a huge ε breaks every point with the stripes, then the loop stops.
  assert float(jnp.abs(run(0.0).delta).max()) == 0.0
  huge = run(1.0)
  assert np.all(np.asarray(mlp_apply(params, {}, x + huge.delta, False)[0].argmax(-1) != y))
  assert np.asarray(huge.queries)[clean_ok].max() < 41
  with pytest.raises(ValueError, match='eps'):
    square_attack(mlp_apply, params, {}, x, y, jax.random.key(3), eps=-1.0)


def test_square_stops_querying_when_every_point_is_broken(untrained):  # noqa: F811
  params, x, y = untrained
  calls = []

  def counting_apply(params, state, x, train):
    jax.debug.callback(lambda: calls.append(1))
    return mlp_apply(params, state, x, train)

  result = jax.jit(lambda eps: square_attack(counting_apply, params, {}, x, y, jax.random.key(3),
                                             eps=eps, queries=40))(1.0)
  jax.block_until_ready(result)
  assert len(calls) == 2 + int(np.asarray(result.queries).max()) - 1 < 40  # clean, stripes, rest
