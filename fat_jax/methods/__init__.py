"""Training methods: specs resolved from the config (`spec`) and the jitted train step (`step`)."""
from fat_jax.methods.spec import (INITS, METHOD_DEFAULTS, AAERSpec, ATASSpec, AttackSpec,
                                  AWPSpec, GradAlignSpec, LAPSpec, MARTSpec, MEPSpec, Method,
                                  TRADESSpec, ZeroGradSpec, resolve_method)
from fat_jax.methods.step import (StartPoint, TrainState, init_examples, init_train_state,
                                  make_train_step, start_point)

__all__ = ['AAERSpec', 'ATASSpec', 'AWPSpec', 'AttackSpec', 'GradAlignSpec', 'INITS', 'LAPSpec',
           'MARTSpec', 'MEPSpec', 'METHOD_DEFAULTS', 'Method', 'StartPoint', 'TRADESSpec',
           'TrainState', 'ZeroGradSpec', 'init_examples', 'init_train_state', 'make_train_step',
           'resolve_method', 'start_point']
