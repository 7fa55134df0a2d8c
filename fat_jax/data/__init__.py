"""Data sets, batching, augmentation and device placement."""
from fat_jax.data.pipeline import AUGMENT_MODES
from fat_jax.data.pipeline import augment
from fat_jax.data.pipeline import epoch_permutation
from fat_jax.data.pipeline import iterate_batches
from fat_jax.data.pipeline import shard_batch
from fat_jax.data.pipeline import steps_per_epoch
from fat_jax.data.sources import DATASET_INFOS
from fat_jax.data.sources import Dataset
from fat_jax.data.sources import DatasetInfo
from fat_jax.data.sources import DatasetNotFoundError
from fat_jax.data.sources import FASHION_MNIST_DEBIAN_DIR
from fat_jax.data.sources import load_dataset

__all__ = [
    'AUGMENT_MODES',
    'DATASET_INFOS',
    'Dataset',
    'DatasetInfo',
    'DatasetNotFoundError',
    'FASHION_MNIST_DEBIAN_DIR',
    'augment',
    'epoch_permutation',
    'iterate_batches',
    'load_dataset',
    'shard_batch',
    'steps_per_epoch',
]
