"""A procedurally generated image dataset for runs and tests that need no download.

Each class has a fixed smooth random template (a few low-frequency sinusoids per channel, amplitude about
0.25 around grey 0.5). A sample is its class template circularly shifted by up to 1/8 of the image,
with random contrast and brightness and pixel noise. The class signal is large against an Linf budget of
8/255, so adversarial training reaches real robust accuracy, yet the shifts and noise keep it from
being trivial. Deterministic in the seed.
"""

import numpy as np

from rpat_jax.data.image_dataset import ImageDataset

_WAVES = 4  # Sinusoids per channel and class.


def _templates(rng: np.random.Generator, num_classes: int, size: int) -> np.ndarray:
  """[K, size, size, 3] float templates in about [-1, 1]."""
  grid = np.arange(size) / size
  yy, xx = np.meshgrid(grid, grid, indexing='ij')
  freqs = rng.integers(1, 4, size=(num_classes, 3, _WAVES, 2))
  phases = rng.uniform(0, 2 * np.pi, size=(num_classes, 3, _WAVES))
  waves = np.sin(2 * np.pi * (freqs[..., 0, None, None] * yy + freqs[..., 1, None, None] * xx)
                 + phases[..., None, None])
  return np.moveaxis(waves.sum(axis=2) / np.sqrt(_WAVES), 1, -1)


def _samples(rng, templates, count, size, num_classes):
  labels = rng.integers(0, num_classes, count).astype(np.int32)
  max_shift = max(size // 8, 1)
  shifts = rng.integers(-max_shift, max_shift + 1, size=(count, 2))
  images = np.empty((count, size, size, 3), np.float32)
  for i in range(count):  # Host-side, once per dataset: a few thousand small rolls.
    images[i] = np.roll(templates[labels[i]], tuple(shifts[i]), axis=(0, 1))
  contrast = rng.uniform(0.15, 0.3, size=(count, 1, 1, 1))
  brightness = rng.uniform(-0.1, 0.1, size=(count, 1, 1, 1))
  images = 0.5 + contrast * images + brightness + rng.normal(0, 0.08, images.shape)
  return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8), labels


def make_synthetic(num_train: int, num_test: int, image_size: int, num_classes: int, seed: int) -> ImageDataset:
  rng = np.random.default_rng(seed)
  templates = _templates(rng, num_classes, image_size)
  train_images, train_labels = _samples(rng, templates, num_train, image_size, num_classes)
  test_images, test_labels = _samples(rng, templates, num_test, image_size, num_classes)
  return ImageDataset(train_images, train_labels, test_images, test_labels, num_classes, 'synthetic')
