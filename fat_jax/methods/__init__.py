"""Training methods composed from values (`roles`), resolved from the config in one place
(`spec.resolve_method`), and the jitted train step that composes them (`step`)."""
from fat_jax.methods.roles import (AAER, AWP, LAP, MART, MMA, TRADES, AdaptiveAttack,
                                   Adversarial, Clock, CrossEntropy, DynamicAttack, FGSMAttack, GradAlign, KLAttack, LCo,
                                   LStable, MEPObjective, PGDAttack, PriorAttack, Regularizer,
                                   StartPoint, TermInputs, TrainingAttack, ZeroGrad, start_point)
from fat_jax.methods.spec import INITS, METHOD_DEFAULTS, Method, resolve_method
from fat_jax.methods.step import (TrainState, evaluated_weights, init_examples, init_train_state,
                                   make_train_step)

__all__ = ['AAER', 'AWP', 'AdaptiveAttack', 'Adversarial', 'Clock', 'CrossEntropy',
           'DynamicAttack', 'FGSMAttack', 'GradAlign', 'INITS', 'KLAttack', 'LAP', 'LCo', 'LStable',
           'MART', 'MEPObjective', 'MMA',
           'METHOD_DEFAULTS', 'Method', 'PGDAttack', 'PriorAttack', 'Regularizer', 'StartPoint',
           'TRADES', 'TermInputs', 'TrainState', 'TrainingAttack', 'ZeroGrad', 'evaluated_weights',
           'init_examples',
           'init_train_state', 'make_train_step', 'resolve_method', 'start_point']
