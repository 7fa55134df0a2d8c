"""Pure losses on logits. Per-example functions return shape (N,)."""
from fat_jax.losses.classification import (
    LOSSES, accuracy, cross_entropy, kl_divergence, margin_loss, per_example_loss, smoothed_labels,
    soft_cross_entropy)
from fat_jax.losses.dart import dart_example_weights, keras_weighted_mean
from fat_jax.losses.dlr import dlr_loss, dlr_targeted_loss
from fat_jax.losses.mma import MMATerms, mma_loss

__all__ = ['LOSSES', 'MMATerms', 'accuracy', 'cross_entropy', 'dart_example_weights', 'dlr_loss',
           'dlr_targeted_loss', 'keras_weighted_mean', 'kl_divergence', 'margin_loss', 'mma_loss',
           'per_example_loss', 'smoothed_labels', 'soft_cross_entropy']
