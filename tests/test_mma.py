"""The MMA objective of the lecture's surrogate-loss table on hand-made logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fat_jax.losses import mma_loss


def test_mma_takes_ce_at_the_adversarial_point_only_where_the_clean_point_is_correct():
  labels = jnp.array([0, 1, 2])
  logits_clean = jnp.array([[2.0, 0.0, 0.0],    # correct
                            [3.0, 1.0, 0.0],    # wrong (predicts 0)
                            [0.0, 0.0, 5.0]])   # correct
  logits_adv = jnp.array([[0.0, 1.0, 0.0],
                          [9.0, 9.0, 9.0],      # ignored: the clean point is wrong
                          [0.0, 0.0, 0.0]])
  ce = lambda z, y: float(np.log(np.exp(z).sum()) - z[y])
  expected_adv = (ce(np.array([0.0, 1.0, 0.0]), 0) + ce(np.zeros(3), 2)) / 3
  expected_clean = ce(np.array([3.0, 1.0, 0.0]), 1) / 3
  loss, terms = mma_loss(logits_clean, logits_adv, labels)
  assert float(terms.adversarial) == pytest.approx(expected_adv, rel=1e-6)
  assert float(terms.clean) == pytest.approx(expected_clean, rel=1e-6)
  assert float(loss) == pytest.approx(expected_adv + expected_clean, rel=1e-6)
  assert float(terms.correct) == pytest.approx(2 / 3)


def test_mma_gradient_flows_to_the_chosen_logits_only():
  labels = jnp.array([0, 1])
  logits_clean = jnp.array([[2.0, 0.0], [2.0, 0.0]])  # correct, wrong
  logits_adv = jnp.array([[0.5, 0.0], [0.0, 3.0]])
  g_clean, g_adv = jax.grad(lambda c, a: mma_loss(c, a, labels)[0], argnums=(0, 1))(
      logits_clean, logits_adv)
  assert np.all(np.asarray(g_clean[0]) == 0) and np.any(np.asarray(g_clean[1]) != 0)
  assert np.any(np.asarray(g_adv[0]) != 0) and np.all(np.asarray(g_adv[1]) == 0)
