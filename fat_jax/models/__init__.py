"""Models: a hashable `Model` wrapper around Flax modules (`core`), the model files, and
`build_model` (`registry`)."""
from fat_jax.models.core import Model
from fat_jax.models.preact_resnet import PreActResNet18
from fat_jax.models.registry import MODEL_NAMES, build_model
from fat_jax.models.resnet import ResNet18
from fat_jax.models.small import MNISTNet, SmallCNN
from fat_jax.models.vit import VisionTransformer
from fat_jax.models.wide_resnet import WideResNet

__all__ = ['MODEL_NAMES', 'MNISTNet', 'Model', 'PreActResNet18', 'ResNet18', 'SmallCNN',
           'VisionTransformer', 'WideResNet', 'build_model']
