"""Training methods: specs resolved from the config (`spec`) and the jitted train step (`step`)."""
from fat_jax.methods.spec import (INITS, METHOD_DEFAULTS, AAERSpec, ATASSpec, AttackSpec,
                                  AWPSpec, COSpec, GradAlignSpec, LAPSpec, MARTSpec, MEPSpec,
                                  Method, StableSpec, TRADESSpec, ZeroGradSpec, resolve_method)
from fat_jax.methods.step import (StartPoint, TrainState, init_examples, init_train_state,
                                  make_train_step, start_point)

__all__ = ['AAERSpec', 'ATASSpec', 'AWPSpec', 'AttackSpec', 'COSpec', 'GradAlignSpec', 'INITS',
           'LAPSpec', 'MARTSpec', 'MEPSpec', 'METHOD_DEFAULTS', 'Method', 'StableSpec',
           'StartPoint', 'TRADESSpec', 'TrainState', 'ZeroGradSpec', 'init_examples',
           'init_train_state', 'make_train_step', 'resolve_method', 'start_point']
