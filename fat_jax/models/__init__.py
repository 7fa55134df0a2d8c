"""Models: a hashable `Model` wrapper around Flax modules (`core`), the model files, and
`build_model` (`registry`)."""
from fat_jax.models.core import Model
from fat_jax.models.preact_resnet import PreActResNet18
from fat_jax.models.registry import MODEL_NAMES, build_model
from fat_jax.models.resnet import ResNet18
from fat_jax.models.small import MNISTNet, SmallCNN

__all__ = ['MODEL_NAMES', 'MNISTNet', 'Model', 'PreActResNet18', 'ResNet18', 'SmallCNN',
           'build_model']
