"""One training step, ``make_train_step(...) -> train_step``, and the `TrainState` it updates.

The step composes the method's values (`fat_jax.methods`) and reads top to bottom:

    batch (uint8, sharded) → augment → attack (δ, its start forward, per-example loss
    weights) → weights.apply → value_and_grad(objective + regularisers) → tx.update
    → weights.undo
    → per-example state written back.

Terms that compare the adversarial forward with the start forward (FGSM-MEP's
logit pairing, L_stable, L_co's L_stable(C_p)) differentiate through both
forwards: the start forward's features and logits come from the attack's own
forward, and their cotangents are pulled back through it (FGSM-MEP's official
code keeps that graph with ``retain_graph``; L_stable and L_co are built on it).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from fat_jax import optim
from fat_jax.data import augment_with, draw_augmentation
from fat_jax.losses import accuracy, cross_entropy
from fat_jax.methods.records import Clock
from fat_jax.methods.regularizers import TermInputs
from fat_jax.methods.spec import Method


class TrainState(NamedTuple):
  """Everything a training step updates.

  `opt_state` is the optax optimiser's state (`optim.TorchSGDState` for the
  launcher's torch SGD: its count and momentum buffers). `examples` is the
  per-example state of the training attack (FGSM-MEP's prior perturbation and
  momentum, ATAS's previous perturbation and gradient norm), with the
  training-set index as leading axis; {} otherwise. `ema` is the moving average of the params
  (`optim.WeightAverage`) when the run keeps one, {} otherwise. `regularizer_state` holds the
  state regularisers keep across steps ({class name: carry}, `init_regularizer_state`; ELLE-A's
  adaptive λ), {} when none does.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  examples: Any = {}
  ema: Any = {}
  regularizer_state: Any = {}


def evaluated_weights(ts: TrainState) -> tuple[str, Any]:
  """('ema', the averaged params) when `ts` keeps an EMA, else ('model', the params): the
  weights every evaluation uses, with the model's BatchNorm statistics."""
  return ('ema', ts.ema) if ts.ema else ('model', ts.params)


def init_train_state(model, key, examples=None, *,
                     tx: Optional[optax.GradientTransformation] = None,
                     ema: Optional[optim.WeightAverage] = None,
                     regularizer_state: Optional[dict] = None) -> TrainState:
  """A fresh state of `model` (initialised from `key`) for the optimiser `tx` (default: the
  torch SGD of `optim.torch_sgd`, whose state does not depend on its schedule), with the
  weight average `ema` (its ŵ₀ = the params) when given and the regularisers' state
  (`init_regularizer_state(method)`)."""
  params, batch_stats = model.init(key)
  opt_state = optim.init_torch_sgd(params) if tx is None else tx.init(params)
  return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, opt_state,
                    {} if examples is None else examples,
                    {} if ema is None else ema.init(params),
                    regularizer_state or {})


def init_examples(method: Method, num_examples: int, frame_shape: tuple[int, ...]) -> dict:
  """The per-example state of `method`'s training attack for a training set of `num_examples`
  images (`frame_shape`: `fat_jax.data.stored_frame_shape` of the data set, so that
  image-space state follows each epoch's crop and flip); {} for attacks without one."""
  return method.attack.init_examples(num_examples, frame_shape)


def init_regularizer_state(method: Method) -> dict:
  """{class name: initial carry} of the regularisers of `method` that keep state across steps
  (ELLE-A); {} when none does."""
  carries = {type(t).__name__: t.init_carry() for t in method.regularizers}
  return {name: carry for name, carry in carries.items() if carry is not None}


def feature_taps(method: Method) -> tuple[str, ...]:
  """The nodes whose start-point features a term of `method` differentiates through."""
  return tuple(sorted({node for term in method.regularizers for node in term.taps}))


def pairs_with_start(method: Method) -> bool:
  """Whether the loss differentiates through the start forward (see the module doc)."""
  return method.objective.pairs_with_start or bool(feature_taps(method))


def _gather(tree, indices):
  return jax.tree.map(lambda a: a[indices], tree)


def _scatter(tree, indices, rows):
  return jax.tree.map(lambda a, r: a.at[indices].set(r), tree, rows)


def make_train_step(model, method: Method, schedule: optim.Schedule, *, augment_mode: str, key,
                    weight_decay: Optional[float] = None,
                    tx: Optional[optax.GradientTransformation] = None,
                    ema: Optional[optim.WeightAverage] = None):
  """``train_step(state, images_uint8, labels, indices) -> (state, metrics)``, pure, jittable.

  The optimiser is `tx` (any optax transformation; LAP and AWP call its
  ``update``), or by default ``optim.torch_sgd(schedule, weight_decay)``. The
  `schedule` also gives the epoch length (FGSM-MEP's and ATAS's resets, AWP's
  warm-up). The logged `lr` and `momentum` are the optimiser's
  (`optim.logged_hyperparams`: an ``optax.inject_hyperparams`` state's, the
  schedule's for `torch_sgd`, none for other optimisers). `indices` are the examples'
  positions in the training set (for per-example state). The step's randomness
  is ``fold_in(key, state.step)``. With `ema` the state's `ema` follows the params after
  each update (`optim.WeightAverage.update` at t = ``state.step + 1``).
  """
  if (tx is None) == (weight_decay is None):
    raise ValueError('make_train_step needs either weight_decay (the torch SGD of the schedule) '
                     'or tx (an optax optimiser, with its own weight decay), not both.')
  if tx is None:
    tx = optim.torch_sgd(schedule, weight_decay)
  attack, objective, weights = method.attack, method.objective, method.weights
  num_epochs = schedule.total_steps // schedule.steps_per_epoch
  masks = {}
  for term in method.regularizers:
    masks.update(term.masks() or {})
  # L_co's masked forward at x + δ follows the objective's forwards.
  forward_order = objective.forward_order(awp=method.awp is not None) + (
      ('masked',) if masks else ())
  taps = feature_taps(method)
  with_params = pairs_with_start(method) or (weights is not None and weights.needs_start)

  def train_step(ts: TrainState, images, labels, indices):
    if bool(ts.ema) != (ema is not None):
      raise ValueError('Pass the same ema to init_train_state and make_train_step (weight '
                       f'average in the state: {bool(ts.ema)}, in the step: {ema is not None}).')
    if set(ts.regularizer_state) != set(init_regularizer_state(method)):
      raise ValueError('The state keeps regulariser state for '
                       f'{sorted(ts.regularizer_state)}, the method needs '
                       f'{sorted(init_regularizer_state(method))}: pass '
                       'regularizer_state=init_regularizer_state(method) to init_train_state.')
    step_key = jax.random.fold_in(key, ts.step)
    aug_key, init_key, align_key = jax.random.split(step_key, 3)
    aug = draw_augmentation(aug_key, images, mode=augment_mode)
    x = augment_with(aug, images)
    clock = Clock(ts.step, schedule.steps_per_epoch, num_epochs)
    adv = attack(model, ts.params, ts.batch_stats, x, labels, init_key,
                 _gather(ts.examples, indices), aug, clock, with_params=with_params, taps=taps)
    metrics = dict(adv.metrics or {})

    def loss_fn(params, start_out):
      """The objective and the regularisers at `params`: (loss, (BatchNorm statistics, terms))."""
      state, prepared = adv.state, []
      for term in method.regularizers:
        value, state = term.prepare(model, params, state, x, labels, adv)
        prepared.append(value)
      logits, features = {}, {}
      for name in forward_order:
        out, state, out_features = model.apply(
            params, state, x if name == 'clean' else x + adv.delta, True,
            masks=masks if name == 'masked' else None)
        logits.setdefault(name, out)
        features.setdefault(name, out_features)
      if adv.example_weights is None:
        loss, aux = objective(logits, labels, start_out[0])
      else:  # DART's per-example weights of the CE (no gradient through them)
        loss, aux = objective(logits, labels, start_out[0], example_weights=adv.example_weights)
      aux.update(ce=cross_entropy(logits['adv'], labels).mean(),
                 accuracy=accuracy(logits['adv'], labels).mean())
      for term, value in zip(method.regularizers, prepared):
        inputs = TermInputs(model, params, state, x, labels, align_key, attack.eps, adv, logits,
                            features['adv'], *start_out,
                            carry=ts.regularizer_state.get(type(term).__name__))
        reg, terms, state = term(inputs, value)
        loss += reg
        aux.update(terms)
      return loss, (state, {**aux, 'loss': loss})

    start_out = (None, {}) if adv.start is None else (
        adv.start.logits, {node: adv.start.features[node] for node in taps})
    params, undo = ts.params, None
    if weights is not None:
      paths = model.weight_layer_order(params)
      params, undo, weight_metrics = weights.apply(
          params, start=adv.start, loss_fn=lambda p: loss_fn(p, start_out)[0], tx=tx,
          opt_state=ts.opt_state, paths=paths, clock=clock)
      metrics.update(weight_metrics)
    if pairs_with_start(method):  # the loss also differentiates through f(x + η), M(x + η)
      (grads, d_start), (batch_stats, aux) = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(
          params, start_out)
      grads = jax.tree.map(jnp.add, grads, adv.start.pullback(d_start)[0])
    else:
      grads, (batch_stats, aux) = jax.grad(loss_fn, has_aux=True)(params, start_out)
    updates, opt_state = tx.update(grads, ts.opt_state, params)
    params = optax.apply_updates(params, updates)
    if weights is not None:
      params = weights.undo(params, paths, undo)
    if method.robust_overfitting_forwards:  # the official loop's clean-accuracy forward
      clean_logits, batch_stats, _ = model.apply(params, batch_stats, x, True)
      metrics['clean_accuracy'] = accuracy(clean_logits, labels).mean()
    metrics.update(aux, **optim.logged_hyperparams(opt_state, schedule, ts.step))
    examples = _scatter(ts.examples, indices, adv.rows)
    average = ts.ema if ema is None else ema.update(ts.ema, params, ts.step + 1)
    carries = {name: next(t for t in method.regularizers if type(t).__name__ == name).next_carry(
        carry, aux) for name, carry in ts.regularizer_state.items()}
    return TrainState(ts.step + 1, params, batch_stats, opt_state, examples, average,
                      carries), metrics

  return train_step
