"""What a dataset is to the trainer: its decoded arrays (`ImageDataset`), and what is known of it before any
image is read (`DatasetInfo`). Both the TFDS reader and the synthetic dataset make these."""

import dataclasses
from typing import Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs before reading any image: split sizes, image shape, class count."""
  num_train: int
  num_test: int
  image_shape: Tuple[int, int, int]
  num_classes: int
  name: str


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  name: str
