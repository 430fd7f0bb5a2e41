"""Data: TFDS datasets as on-device uint8 arrays, the synthetic dataset, on-device augmentation."""

from rpat_jax.data.augment import random_crop_flip, to_float
from rpat_jax.data.dataset import (PREPARED_ON_FIRST_USE, PUBLISHED, DatasetInfo, DatasetNotFoundError,
                                   ImageDataset, dataset_available, describe, how_to_prepare, load_dataset,
                                   load_rows, published_info)
from rpat_jax.data.synthetic import make_synthetic

__all__ = ['PREPARED_ON_FIRST_USE', 'PUBLISHED', 'published_info', 'DatasetInfo', 'DatasetNotFoundError', 'ImageDataset', 'dataset_available',
           'describe', 'how_to_prepare', 'load_dataset', 'load_rows', 'make_synthetic',
           'random_crop_flip', 'to_float']
