"""TFDS image-classification datasets as uint8 arrays, decoded once and cached on disk.

Reading uses `tfds.data_source` (random-access ArrayRecord files), so no TensorFlow is needed at run
time; preparing a dataset needs TensorFlow and the internet once (see `DatasetNotFoundError`). The whole
decoded dataset is small (CIFAR: 180 MB) and is placed on the device by the trainer.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
from typing import Optional, Tuple

import ml_collections
import numpy as np
from absl import logging

_CHUNK = 1000  # Records per read; chunks are decoded in parallel (PIL releases the GIL).


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  name: str


class DatasetNotFoundError(FileNotFoundError):
  """A dataset that is not prepared where we look; the message says how to prepare it."""

  def __init__(self, name: str, data_dir: Optional[str]):
    where = data_dir or 'the TFDS default data_dir (~/tensorflow_datasets)'
    super().__init__(
        f'dataset {name!r} is not prepared (as ArrayRecord) in {where}; prepare it once on a machine with '
        f'TensorFlow and internet: `tfds build {name} --file_format=array_record --data_dir=DIR`, then pass '
        f'--config.data.data_dir=DIR (or use --config.data.name=synthetic for a run without download)')


def _builder(name: str, data_dir: Optional[str]):
  """The TFDS builder of a prepared ArrayRecord dataset, or None. Never downloads."""
  import tensorflow_datasets as tfds  # Slow import: only where a TFDS dataset is asked for.
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception:  # tfds raises DatasetNotFoundError (a ValueError) for unknown, unprepared names.
    return None
  if not builder.is_prepared() or 'array_record' not in str(builder.info.file_format).lower():
    return None
  return builder


def dataset_available(name: str, data_dir: Optional[str]) -> bool:
  """True if `name` can be read without download: 'synthetic' or a prepared ArrayRecord dataset."""
  return name == 'synthetic' or _builder(name, data_dir) is not None


def _feature_keys(builder) -> Tuple[str, str]:
  """(image key, label key): 'image'/'label' or the dataset's single Image / ClassLabel feature."""
  import tensorflow_datasets as tfds
  features = builder.info.features
  image = 'image' if 'image' in features else next(k for k, f in features.items() if isinstance(f, tfds.features.Image))
  label = 'label' if 'label' in features else next(k for k, f in features.items()
                                                   if isinstance(f, tfds.features.ClassLabel))
  return image, label


def _cache_path(cache_dir: str, builder, data_dir: Optional[str], split: str) -> str:
  if not cache_dir:
    cache_dir = os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'rpat_jax')
  where = hashlib.sha1(os.path.abspath(builder.data_dir).encode()).hexdigest()[:10]
  safe_split = split.replace('[', '_').replace(']', '').replace(':', '-').replace('%', 'pct')
  return os.path.join(cache_dir, f'{builder.name}-{builder.info.version}-{safe_split}-{where}.npz')


def _decode_split(builder, data_dir: Optional[str], split: str) -> Tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds
  source = tfds.data_source(builder.name, data_dir=data_dir, split=split, download=False)
  image_key, label_key = _feature_keys(builder)

  def read(start):
    records = source.__getitems__(list(range(start, min(start + _CHUNK, len(source)))))
    return (np.stack([np.asarray(r[image_key], np.uint8) for r in records]),
            np.asarray([r[label_key] for r in records], np.int32))

  with concurrent.futures.ThreadPoolExecutor(max(os.cpu_count() or 1, 1)) as pool:
    parts = list(pool.map(read, range(0, len(source), _CHUNK)))
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _load_split(builder, data_config, split: str) -> Tuple[np.ndarray, np.ndarray]:
  path = _cache_path(data_config.cache_dir, builder, data_config.data_dir, split)
  if os.path.exists(path):
    logging.info('Reading %s[%s] from the cache %s.', builder.name, split, path)
    with np.load(path) as cached:
      return cached['images'], cached['labels']
  logging.info('Decoding %s[%s] from %s (cached afterwards in %s).', builder.name, split, builder.data_dir, path)
  images, labels = _decode_split(builder, data_config.data_dir, split)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = f'{path}.tmp{os.getpid()}.npz'
  np.savez(temporary, images=images, labels=labels)
  os.replace(temporary, path)  # Atomic: a reader sees the whole cache file or none.
  return images, labels


def load_dataset(data_config: ml_collections.ConfigDict) -> ImageDataset:
  """The train and test splits named by `data_config` as uint8 / int32 numpy arrays."""
  if data_config.name == 'synthetic':
    from rpat_jax.data.synthetic import make_synthetic
    s = data_config.synthetic
    return make_synthetic(s.num_train, s.num_test, s.image_size, s.num_classes, s.seed)
  builder = _builder(data_config.name, data_config.data_dir)
  if builder is None:
    raise DatasetNotFoundError(data_config.name, data_config.data_dir)
  train_images, train_labels = _load_split(builder, data_config, data_config.train_split)
  test_images, test_labels = _load_split(builder, data_config, data_config.test_split)
  num_classes = builder.info.features[_feature_keys(builder)[1]].num_classes
  return ImageDataset(train_images, train_labels, test_images, test_labels, num_classes, data_config.name)
