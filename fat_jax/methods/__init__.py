"""Training methods: specs resolved from the config (`spec`) and the jitted train step (`step`)."""
from fat_jax.methods.spec import (INITS, METHOD_DEFAULTS, AAERSpec, AttackSpec, COSpec,
                                  GradAlignSpec, LAPSpec, MEPSpec, Method, StableSpec,
                                  resolve_method)
from fat_jax.methods.step import (StartPoint, TrainState, init_examples, init_train_state,
                                  make_train_step, start_point)

__all__ = ['AAERSpec', 'AttackSpec', 'COSpec', 'GradAlignSpec', 'INITS', 'LAPSpec', 'MEPSpec',
           'METHOD_DEFAULTS', 'Method', 'StableSpec', 'StartPoint', 'TrainState', 'init_examples',
           'init_train_state', 'make_train_step', 'resolve_method', 'start_point']
