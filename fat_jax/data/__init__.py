"""Data sets, batching, augmentation and device placement."""
from fat_jax.data.loader import (PIPELINES, STREAM_INFOS, MemoryBatches, StreamBatches,
                                 StreamingDataset, load_data, train_batches)
from fat_jax.data.pipeline import (AUGMENT_MODES, Augmentation, augment, augment_with,
                                   draw_augmentation, epoch_permutation, iterate_batches,
                                   shard_batch, shard_local_batch, steps_per_epoch,
                                   stored_frame_shape, to_batch_frame, to_stored_frame)
from fat_jax.data.sources import (DATASET_INFOS, FASHION_MNIST_DEBIAN_DIR, Dataset, DatasetInfo,
                                  DatasetNotFoundError, load_dataset)

__all__ = [
    'AUGMENT_MODES', 'Augmentation', 'DATASET_INFOS', 'Dataset', 'DatasetInfo',
    'DatasetNotFoundError', 'FASHION_MNIST_DEBIAN_DIR', 'MemoryBatches', 'PIPELINES',
    'STREAM_INFOS', 'StreamBatches', 'StreamingDataset', 'augment', 'augment_with',
    'draw_augmentation', 'epoch_permutation', 'iterate_batches', 'load_data', 'load_dataset',
    'shard_batch', 'shard_local_batch', 'steps_per_epoch', 'stored_frame_shape',
    'to_batch_frame', 'to_stored_frame', 'train_batches',
]
