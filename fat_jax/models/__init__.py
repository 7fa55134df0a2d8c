"""Models: a hashable `Model` wrapper around Flax modules, and `build_model`."""
from fat_jax.models.core import MODEL_NAMES, Model, build_model
from fat_jax.models.preact_resnet import PreActResNet18
from fat_jax.models.resnet import ResNet18
from fat_jax.models.small import MNISTNet, SmallCNN

__all__ = ['MODEL_NAMES', 'MNISTNet', 'Model', 'PreActResNet18', 'ResNet18', 'SmallCNN',
           'build_model']
