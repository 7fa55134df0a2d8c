"""Training methods composed from values, one module per role, resolved from the config in one
place (`spec.resolve_method`), and the jitted train step that composes them (`step`):

    Method(attack=<training attack>, objective=<exactly one objective>,
           regularizers=(<term>, ...), weights=<LAP | AWP | None>)

with the optax optimiser given to `make_train_step`. Each value is a frozen, hashable
dataclass (a static jit argument) that carries its own computation: `training_attacks`,
`objectives`, `regularizers`, `weight_perturbations`; `records` holds what they pass to each
other (`Clock`, `StartPoint`, `Adversarial`)."""
from fat_jax.methods.objectives import MART, MMA, TRADES, CrossEntropy, MEPObjective
from fat_jax.methods.records import Adversarial, Clock, StartPoint
from fat_jax.methods.regularizers import (AAER, ELLE, GradAlign, LCo, LStable, Regularizer,
                                          TermInputs)
from fat_jax.methods.spec import (METHOD_DEFAULTS, TRAINING_ATTACK_STARTS, Method, resolve_method,
                                  unread_fields)
from fat_jax.methods.step import (TrainState, evaluated_weights, init_examples,
                                  init_regularizer_state, init_train_state, make_train_step)
from fat_jax.methods.training_attacks import (AdaptiveAttack, DynamicAttack, FGSMAttack,
                                              KLAttack, PGDAttack, PriorAttack, TrainingAttack,
                                              ZeroGrad, start_point)
from fat_jax.methods.weight_perturbations import AWP, LAP

__all__ = ['AAER', 'AWP', 'ELLE', 'AdaptiveAttack', 'Adversarial', 'Clock', 'CrossEntropy',
           'DynamicAttack', 'FGSMAttack', 'GradAlign', 'KLAttack', 'LAP', 'LCo', 'LStable',
           'MART', 'MEPObjective', 'METHOD_DEFAULTS', 'MMA', 'Method', 'PGDAttack', 'PriorAttack',
           'Regularizer', 'StartPoint', 'TRADES', 'TRAINING_ATTACK_STARTS', 'TermInputs',
           'TrainState', 'TrainingAttack', 'ZeroGrad', 'evaluated_weights', 'init_examples',
           'init_regularizer_state', 'init_train_state', 'make_train_step', 'resolve_method',
           'start_point', 'unread_fields']
