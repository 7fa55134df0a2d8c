"""Exactness against the official code where float32 ties and clips decide: GradAlign's first
gradient through the FGSM forward's box clamp, DART's clipped Keras CE, and the L2 APGD loop
of `fra31/auto-attack` transcribed in numpy (float32, x coordinates) and compared step by step."""
import jax
import jax.numpy as jnp
import numpy as np

from fat_jax.attacks.apgd import apgd_functions, apgd_iterations, apgd_start
from fat_jax.losses import cross_entropy
from fat_jax.methods import Clock, CrossEntropy, FGSMAttack, GradAlign
from tests.test_apgd import init_mlp, mlp_apply, toy_data
from tests.test_lecture_methods import batch, tiny_model

EPS = 8 / 255


# ----------------------------------------------------------------------- GradAlign


def test_gradalign_first_gradient_is_taken_through_the_official_box_clamp():
  """The official FGSM forward is model(clamp(X + δ, 0, 1)) with clamp = max(min(X, 1), 0):
  at δ = 0 a pixel exactly 0 or 1 gets half of its gradient (torch's tie rule; JAX's
  `jnp.maximum`/`jnp.minimum` split ties the same way)."""
  model = tiny_model()
  params, state = model.init(jax.random.key(0))
  images, labels = batch()
  x = images.astype(jnp.float32) / 255
  ties = (x == 0) | (x == 1)
  assert ties.any() and not ties.all()
  adv = FGSMAttack(EPS, EPS)(model, params, state, x, labels, jax.random.key(1), {}, None,
                             Clock(jnp.asarray(0), 2, 4))
  ours, _ = GradAlign(0.2).prepare(model, params, state, x, labels, adv)

  def official_loss(delta):
    clamped = jnp.maximum(jnp.minimum(x + delta, 1.0), 0.0)
    return cross_entropy(model.apply(params, state, clamped, True)[0], labels).mean()

  official = jax.grad(official_loss)(jnp.zeros_like(x))
  np.testing.assert_allclose(ours, official, rtol=1e-5, atol=1e-12)
  full = np.asarray(adv.clean_gradient)
  assert np.abs(full[np.asarray(ties)]).max() > 0
  np.testing.assert_array_equal(np.asarray(ours)[np.asarray(ties)], 0.5 * full[np.asarray(ties)])


# ----------------------------------------------------------------------- DART


def keras_clipped_ce(logits, labels):
  """The official ``losses.cross_entropy`` on softmax outputs: −Σ y·log(clip(p/Σp, ε, 1 − ε))."""
  z = logits - logits.max(axis=1, keepdims=True)
  p = jnp.exp(z) / jnp.exp(z).sum(axis=1, keepdims=True)
  p = p / p.sum(axis=1, keepdims=True)
  p = jnp.clip(p, np.float32(1e-7), np.float32(1 - 1e-7))
  return -jnp.sum(jax.nn.one_hot(labels, logits.shape[1]) * jnp.log(p), axis=1)


def test_dart_training_loss_is_the_official_clipped_cross_entropy():
  """Examples with p_y < 10⁻⁷ or p_y > 1 − 10⁻⁷ get no gradient (the official clip), however
  heavily they are weighted; the others the weighted log-softmax CE's."""
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(6, 10)) * 2, jnp.float32)
  labels = jnp.asarray([0, 1, 2, 3, 4, 5])
  logits = logits.at[0, 0].set(-30.0)          # p_y ≈ 10⁻¹³ < 10⁻⁷
  logits = logits.at[1, 1].set(40.0)           # p_y = 1 in float32 > 1 − 10⁻⁷
  weights = jnp.asarray([30.0, 0.5, 1.0, 2.0, 0.7, 1.3])
  objective = lambda z: CrossEntropy()({'adv': z}, labels, None, example_weights=weights)[0]
  ours = np.asarray(jax.grad(objective)(logits))
  official = np.asarray(jax.grad(
      lambda z: jnp.sum(weights * keras_clipped_ce(z, labels)) / 6)(logits))
  assert not ours[:2].any()
  assert np.abs(ours[2:]).min(axis=1).max() > 0
  np.testing.assert_allclose(ours, official, atol=1e-6)
  np.testing.assert_allclose(objective(logits), jnp.sum(weights * keras_clipped_ce(logits, labels))
                             / 6, rtol=1e-5)


# ----------------------------------------------------------------------- L2 APGD


def reference_apgd_l2_iterates(loss_grad, x, start, steps, eps, rho=0.75):
  """autopgd_base.py ``attack_single_run`` for norm 'L2' in float32 and x coordinates, line by
  line: ``normalize`` and the projection with their 1e−12, step size 2ε, momentum 0.75, the
  checkpoints and the jump to ``x_best``. Returns x_adv − x after every iteration and, per
  iteration, the smallest gap between the consecutive losses its checkpoint compared (∞: none)."""
  f32 = np.float32
  norm = lambda v: np.sqrt((v ** 2).reshape(len(v), -1).sum(-1)).reshape(-1, 1, 1, 1)
  normalize = lambda v: v / (norm(v) + f32(1e-12))
  eps_ones = f32(eps) * np.ones_like(x)
  project = lambda v: np.clip(x + normalize(v - x) * np.minimum(eps_ones, norm(v - x)), 0, 1)
  n_iter_2, n_iter_min, size_decr = (max(int(f * steps), 1) for f in (0.22, 0.06, 0.03))
  x_adv = (x + start).astype(f32)
  loss, grad = loss_grad(x_adv)
  x_best, loss_best, grad_best = x_adv.copy(), loss.copy(), grad.copy()
  step_size = f32(2 * eps) * np.ones((len(x), 1, 1, 1), f32)
  x_adv_old, k, counter3 = x_adv.copy(), n_iter_2, 0
  loss_steps = np.zeros((steps, len(x)), f32)
  loss_best_last_check, reduced_last_check = loss_best.copy(), np.ones(len(x), bool)
  iterates, gaps = [], np.full(steps, np.inf)
  for i in range(steps):
    grad2, x_adv_old = x_adv - x_adv_old, x_adv.copy()
    a = f32(0.75 if i > 0 else 1.0)
    x_adv_1 = project(x_adv + step_size * normalize(grad))
    x_adv = project(x_adv + (x_adv_1 - x_adv) * a + grad2 * (f32(1) - a))
    loss, grad = loss_grad(x_adv)
    loss_steps[i] = loss
    ind = loss > loss_best
    x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], loss[ind]
    counter3 += 1
    if counter3 == k:
      gaps[i] = min(np.abs(loss_steps[i - c] - loss_steps[i - c - 1]).min() for c in range(k))
      t = sum((loss_steps[i - c] > loss_steps[i - c - 1]).astype(f32) for c in range(k))
      fl = (t <= k * rho) | (~reduced_last_check & (loss_best_last_check >= loss_best))
      reduced_last_check, loss_best_last_check = fl.copy(), loss_best.copy()
      step_size[fl] /= 2
      x_adv[fl], grad[fl] = x_best[fl], grad_best[fl]
      k, counter3 = max(k - size_decr, n_iter_min), 0
    iterates.append(x_adv - x)
  return iterates, gaps


def test_apgd_l2_follows_the_reference_loop_step_by_step():
  """Every iterate agrees with the float32 transcription up to rounding (δ against x
  coordinates) until a checkpoint compares two losses within 10⁻⁵ of each other: an iterate
  resting on the sphere repeats its loss up to rounding, and from there either loop may halve
  where the other does not (docs/deviations.md)."""
  x, _ = toy_data(jax.random.key(12), 16, shape=(8, 8, 3))
  params = init_mlp(jax.random.key(13), 192, scale=3.0)
  y = mlp_apply(params, {}, x, False)[0].argmax(-1).at[:3].add(1) % 10
  steps, eps, key = 20, 1.5, jax.random.key(4)
  gradient, misclassified = apgd_functions(mlp_apply, params, x, y)
  carry = apgd_start(gradient, misclassified, x, key, eps=eps, state={}, norm='L2')
  iteration = jax.jit(lambda c, k: apgd_iterations(gradient, misclassified, x, key, c, k, k + 1,
                                                    eps=eps, steps=steps, rho=0.75, norm='L2'))
  start, ours, step_sizes = np.asarray(carry['delta']), [], []
  for k in range(steps):
    carry = iteration(carry, k)
    ours.append(np.asarray(carry['delta']))
    step_sizes.append(np.asarray(carry['step']))

  losses = lambda x_adv: cross_entropy(mlp_apply(params, {}, x_adv, False)[0], y)
  loss_and_grad = jax.jit(lambda x_adv: (losses(x_adv), jax.grad(lambda v: losses(v).sum())(x_adv)))
  loss_grad = lambda x_adv: tuple(np.array(a) for a in loss_and_grad(jnp.asarray(x_adv)))

  ref, gaps = reference_apgd_l2_iterates(loss_grad, np.asarray(x), start, steps, eps)
  # A checkpoint comparing losses equal up to rounding may decide either way; agree until then.
  exact = int(np.argmax(gaps < 1e-5)) if (gaps < 1e-5).any() else steps
  assert exact >= 10 and np.isfinite(gaps[:exact]).sum() >= 4      # four checkpoints decided
  assert step_sizes[exact - 1].min() < 2 * eps                       # some step size halved
  for i in range(exact):
    np.testing.assert_allclose(ours[i], ref[i], atol=1e-6, err_msg=f'iteration {i}')
