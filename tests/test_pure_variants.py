"""The pure attack and loss functions give the same, hand-checked results jitted and not
(`chex.variants`), and their shape assertions fire in both."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks import fgsm_attack, pgd_attack
from fat_jax.losses import cross_entropy, kl_divergence, margin_loss
from fat_jax.losses.gradalign import cosine_alignment
from fat_jax.losses.input_gradient import input_gradient
from fat_jax.losses.trades import trades_loss

EPS = 8 / 255


def linear_apply(params, state, x, train):
  del train
  return x.reshape(len(x), -1) @ params, state, {}


def problem():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = jax.random.normal(k1, (2 * 2 * 3, 5))
  x = jax.random.uniform(k2, (8, 2, 2, 3))
  y = jax.random.randint(k3, (8,), 0, 5)
  return params, {}, x, y


def hand_cross_entropy(logits, labels):
  z = np.asarray(logits, np.float64)
  log_softmax = z - z.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  return -log_softmax[np.arange(len(z)), np.asarray(labels)]


class AttackVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_fgsm_from_zero_is_the_signed_input_gradient_step(self):
    params, state, x, y = problem()
    attack = self.variant(functools.partial(fgsm_attack, linear_apply, eps=EPS, alpha=EPS))
    delta = attack(params, state, x, y, jax.random.key(1)).delta
    grad = jax.grad(lambda d: cross_entropy(linear_apply(params, state, x + d, True)[0],
                                            y).mean())(jnp.zeros_like(x))
    expected = np.clip(np.asarray(x) + EPS * np.sign(grad), 0, 1) - np.asarray(x)
    np.testing.assert_allclose(delta, expected, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_pgd_stays_in_the_ball_and_box_and_raises_the_loss(self):
    params, state, x, y = problem()
    attack = self.variant(functools.partial(pgd_attack, linear_apply, eps=EPS, alpha=EPS / 4,
                                            steps=5, freeze_misclassified=False))
    delta = attack(params, state, x, y, jax.random.key(1)).delta
    assert float(jnp.abs(delta).max()) <= EPS + 1e-6
    assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
    loss = lambda d: cross_entropy(linear_apply(params, state, x + d, False)[0], y).mean()
    assert float(loss(delta)) > float(loss(jnp.zeros_like(x)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_input_gradient_rejects_a_perturbation_of_another_shape(self):
    params, state, x, y = problem()
    gradient = self.variant(functools.partial(input_gradient, linear_apply, train=False))
    with self.assertRaisesRegex(AssertionError, 'assert_equal_shape'):
      gradient(params, state, x, y, jnp.zeros(x.shape[1:]))


class LossVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_cross_entropy_and_margin_match_their_formulas(self):
    logits = jax.random.normal(jax.random.key(2), (6, 4)) * 3
    labels = jnp.array([0, 1, 2, 3, 0, 1])
    np.testing.assert_allclose(self.variant(cross_entropy)(logits, labels),
                               hand_cross_entropy(logits, labels), rtol=1e-5)
    z = np.asarray(logits)
    others = np.where(np.eye(4, dtype=bool)[labels], -np.inf, z).max(-1)
    np.testing.assert_allclose(self.variant(margin_loss)(logits, labels),
                               others - z[np.arange(6), labels], rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_trades_is_ce_plus_beta_kl(self):
    k1, k2 = jax.random.split(jax.random.key(3))
    clean, adv = jax.random.normal(k1, (6, 4)), jax.random.normal(k2, (6, 4))
    labels = jnp.arange(6) % 4
    loss, terms = self.variant(functools.partial(trades_loss, beta=6.0))(clean, adv, labels)
    p, q = jax.nn.softmax(clean), jax.nn.softmax(adv)
    kl = np.sum(np.asarray(p) * (np.log(p) - np.log(q)), axis=-1).mean()
    np.testing.assert_allclose(terms.robust, kl, rtol=1e-5)
    np.testing.assert_allclose(loss, hand_cross_entropy(clean, labels).mean() + 6.0 * kl,
                               rtol=1e-5)
    np.testing.assert_allclose(self.variant(kl_divergence)(clean, clean), np.zeros(6), atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_cosine_alignment_of_equal_opposite_and_zero_gradients(self):
    g = jax.random.normal(jax.random.key(4), (3, 2, 2, 1))
    g = g.at[2].set(0.0)
    cos, valid = self.variant(cosine_alignment)(g, g.at[1].multiply(-1.0))
    np.testing.assert_allclose(cos[:2], [1.0, -1.0], rtol=1e-6)
    np.testing.assert_array_equal(valid, [True, True, False])

  @chex.variants(with_jit=True, without_jit=True)
  def test_losses_reject_logits_and_labels_of_other_ranks(self):
    logits, labels = jnp.zeros((6, 4)), jnp.zeros((6,), jnp.int32)
    with self.assertRaisesRegex(AssertionError, 'assert_rank'):
      self.variant(cross_entropy)(logits[0], labels)
    with self.assertRaisesRegex(AssertionError, 'assert_equal_shape_prefix'):
      self.variant(margin_loss)(logits, labels[:5])
    with self.assertRaisesRegex(AssertionError, 'assert_equal_shape'):
      self.variant(functools.partial(trades_loss, beta=1.0))(logits, logits[:, :3], labels)
