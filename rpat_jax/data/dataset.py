"""TFDS image-classification datasets as uint8 arrays, decoded once and cached on disk.

Reading uses `tfds.data_source` (random-access ArrayRecord files), so no TensorFlow is needed at run
time. CIFAR-10/100 and Tiny-ImageNet are prepared without TensorFlow too (`rpat_jax.data.prepare`,
`rpat_jax.data.tiny_imagenet`); other TFDS datasets need `tfds build` once (see `DatasetNotFoundError`). The whole
decoded dataset is small (CIFAR: 180 MB) and is placed on the devices by the trainer. With several
processes each one reads only the rows its devices hold (`describe` + `load_rows`).

A data_dir in a bucket (`gs://BUCKET/tfds`, where TPU users keep datasets) is copied once per machine into
the local cache (`_local_copy`) and read from there: TFDS's ArrayRecord reader reads local files only.
"""

import concurrent.futures
import hashlib
import os
import shutil
import tempfile
from typing import Optional, Tuple

import ml_collections
import numpy as np
from absl import logging

from rpat_jax.data.image_dataset import DatasetInfo, ImageDataset
from rpat_jax.data.synthetic import make_synthetic
from rpat_jax.run import paths

_CHUNK = 1000  # Records per read; chunks are decoded in parallel (PIL releases the GIL).
# Prepared by the trainer when missing (`rpat_jax.data.prepare`): the canonical tarballs need no TensorFlow.
PREPARED_ON_FIRST_USE = ('cifar10', 'cifar100')


# The published sizes of the paper's datasets: what `aot` builds programs for, with no dataset on disk.
PUBLISHED = {
    'cifar10': DatasetInfo(50_000, 10_000, (32, 32, 3), 10, 'cifar10'),
    'cifar100': DatasetInfo(50_000, 10_000, (32, 32, 3), 100, 'cifar100'),
    'tiny_imagenet': DatasetInfo(100_000, 10_000, (64, 64, 3), 200, 'tiny_imagenet'),
}


def published_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """The description of `data_config`'s dataset without reading it: the synthetic one's from its keys,
  the paper's from their published sizes; KeyError for any other."""
  if data_config.name == 'synthetic':
    return describe(data_config)
  return PUBLISHED[data_config.name]


def how_to_prepare(name: str, data_dir: Optional[str]) -> str:
  """The command that prepares `name` where it was looked for."""
  where = f' --data_dir={data_dir}' if data_dir else ''
  if name in ('cifar10', 'cifar100'):
    return f'`python -m rpat_jax.data.prepare {name}{where}` (no TensorFlow; --source=PATH offline)'
  if name == 'tiny_imagenet':
    return f'`python -m rpat_jax.data.tiny_imagenet --source=tiny-imagenet-200{where}`'
  return (f'`tfds build {name} --file_format=array_record --data_dir=DIR` on a machine with TensorFlow, then '
          '--config.data.data_dir=DIR')


class DatasetNotFoundError(FileNotFoundError):
  """A dataset that is not prepared where we look; the message says how to prepare it."""

  def __init__(self, name: str, data_dir: Optional[str]):
    where = data_dir or 'the TFDS default data_dir (~/tensorflow_datasets)'
    builder = _prepared_builder(name, data_dir)
    if builder is not None and not _has_array_record(builder):
      super().__init__(
          f'dataset {name!r} in {where} is in TFRecord files (what tfds.load writes), and rpat_jax reads ArrayRecord; '
          f'copy it as ArrayRecord with `python -m rpat_jax.data.prepare {name}'
          f'{" --data_dir=" + data_dir if data_dir else ""} --convert_tfrecord=OTHER_DIR` (reads {builder.data_dir} '
          'with TensorFlow), or prepare it anew: '
          f'{how_to_prepare(name, "OTHER_DIR")}')
      return
    super().__init__(f'dataset {name!r} is not prepared (as ArrayRecord) in {where}; prepare it once with '
                     f'{how_to_prepare(name, data_dir)} (or use --config.data.name=synthetic for a run without '
                     'download)')


def _prepared_builder(name: str, data_dir: Optional[str]):
  """The TFDS builder of `name` if some format of it is prepared in data_dir, else None. Never downloads."""
  import tensorflow_datasets as tfds  # Slow import: only where a TFDS dataset is asked for.
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception:  # tfds raises DatasetNotFoundError (a ValueError) for unknown, unprepared names.
    return None
  return builder if builder.is_prepared() else None


def _has_array_record(builder) -> bool:
  """ArrayRecord files, as the dataset's format or beside another (`tfds convert_format` adds them)."""
  return any('array_record' in str(f).lower() for f in builder.info.available_file_formats())


def _builder(name: str, data_dir: Optional[str]):
  """The TFDS builder of a prepared ArrayRecord dataset, or None. Never downloads."""
  builder = _prepared_builder(name, data_dir)
  return builder if builder is not None and _has_array_record(builder) else None


def prepared_as_tfrecord(name: str, data_dir: Optional[str]) -> bool:
  """True where `name` is prepared without ArrayRecord files (TFDS's default TFRecord format)."""
  builder = _prepared_builder(name, data_dir)
  return builder is not None and not _has_array_record(builder)


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
  cache_dir = _cache_root(cache_dir)
  where = hashlib.sha1(os.path.abspath(builder.data_dir).encode()).hexdigest()[:10]
  safe_split = split.replace('[', '_').replace(']', '').replace(':', '-').replace('%', 'pct')
  return os.path.join(cache_dir, f'{builder.name}-{builder.info.version}-{safe_split}-{where}.npz')


def _decode_rows(source, keys: Tuple[str, str], rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Decodes the records `rows` of a TFDS data source, in chunks, in parallel threads."""
  image_key, label_key = keys

  def read(start):
    records = source.__getitems__([int(row) for row in rows[start:start + _CHUNK]])
    return (np.stack([np.asarray(r[image_key], np.uint8) for r in records]),
            np.asarray([r[label_key] for r in records], np.int32))

  with concurrent.futures.ThreadPoolExecutor(max(os.cpu_count() or 1, 1)) as pool:
    parts = list(pool.map(read, range(0, len(rows), _CHUNK)))
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _decode_split(builder, data_dir: Optional[str], split: str) -> Tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds
  source = tfds.data_source(builder.name, data_dir=data_dir, split=split, download=False)
  return _decode_rows(source, _feature_keys(builder), np.arange(len(source)))


def _cache_root(cache_dir: str) -> str:
  return cache_dir or os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'rpat_jax')


def _local_copy(data_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`data_config` itself, or for a data_dir in a bucket a copy reading from a local copy of the dataset's
  prepared version (made once per machine: copied into a temporary folder, then renamed into place, so a
  half-copied dataset is never read). A dataset that is not prepared there is left for the caller to report."""
  if data_config.name == 'synthetic' or not data_config.data_dir or not paths.is_remote(data_config.data_dir):
    return data_config
  builder = _builder(data_config.name, data_config.data_dir)
  if builder is None:
    return data_config
  version = f'{builder.name}/{builder.info.version}'
  digest = hashlib.sha1(str(data_config.data_dir).rstrip('/').encode()).hexdigest()[:10]
  local_dir = os.path.join(_cache_root(data_config.cache_dir), 'data_dirs', digest)
  target = os.path.join(local_dir, version)
  if not os.path.isfile(os.path.join(target, 'dataset_info.json')):
    logging.info('Copying %s from %s to %s (once per machine).', version, data_config.data_dir, local_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix='.copy-', dir=os.path.dirname(target))
    try:
      paths.copy_to_local(f'{str(data_config.data_dir).rstrip("/")}/{version}', scratch)
      try:
        os.rename(scratch, target)
      except OSError:  # Another process of this machine finished first.
        if not os.path.isfile(os.path.join(target, 'dataset_info.json')):
          raise
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
  local = ml_collections.ConfigDict(data_config.to_dict())
  local.data_dir = local_dir
  return local


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
    s = data_config.synthetic
    return make_synthetic(s.num_train, s.num_test, s.image_size, s.num_classes, s.seed)
  data_config = _local_copy(data_config)
  builder = _builder(data_config.name, data_config.data_dir)
  if builder is None:
    raise DatasetNotFoundError(data_config.name, data_config.data_dir)
  train_images, train_labels = _load_split(builder, data_config, data_config.train_split)
  test_images, test_labels = _load_split(builder, data_config, data_config.test_split)
  num_classes = builder.info.features[_feature_keys(builder)[1]].num_classes
  return ImageDataset(train_images, train_labels, test_images, test_labels, num_classes, data_config.name)


def _split_name(data_config: ml_collections.ConfigDict, split: str) -> str:
  if split not in ('train', 'test'):
    raise ValueError(f'split={split!r}; allowed: train, test')
  return data_config.train_split if split == 'train' else data_config.test_split


def describe(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Split sizes, image shape and class count, read from the dataset's metadata (no image decoded)."""
  if data_config.name == 'synthetic':
    s = data_config.synthetic
    return DatasetInfo(s.num_train, s.num_test, (s.image_size, s.image_size, 3), s.num_classes, 'synthetic')
  import tensorflow_datasets as tfds
  data_config = _local_copy(data_config)
  builder = _builder(data_config.name, data_config.data_dir)
  if builder is None:
    raise DatasetNotFoundError(data_config.name, data_config.data_dir)
  image_key, label_key = _feature_keys(builder)
  shape = builder.info.features[image_key].shape
  if any(dim is None for dim in shape):  # Variable-size images: the first training image decides.
    source = tfds.data_source(builder.name, data_dir=data_config.data_dir, split=data_config.train_split)
    shape = np.asarray(source[0][image_key]).shape
  sizes = [len(tfds.data_source(builder.name, data_dir=data_config.data_dir, split=_split_name(data_config, split),
                                download=False)) for split in ('train', 'test')]
  return DatasetInfo(sizes[0], sizes[1], tuple(shape), builder.info.features[label_key].num_classes,
                     data_config.name)


def load_rows(data_config: ml_collections.ConfigDict, split: str, rows: np.ndarray
              ) -> Tuple[np.ndarray, np.ndarray]:
  """Images and labels of the given rows of `split` ('train' or 'test'), in the order of `rows`.

  All rows of the split come from the decoded cache (written on first use); a subset, what one process
  of several needs, is read from the cache when it exists and decoded record by record otherwise.
  """
  rows = np.asarray(rows, np.int64)
  if data_config.name == 'synthetic':
    dataset = load_dataset(data_config)
    images, labels = ((dataset.train_images, dataset.train_labels) if split == 'train'
                      else (dataset.test_images, dataset.test_labels))
    return images[rows], labels[rows]
  import tensorflow_datasets as tfds
  data_config = _local_copy(data_config)
  builder = _builder(data_config.name, data_config.data_dir)
  if builder is None:
    raise DatasetNotFoundError(data_config.name, data_config.data_dir)
  name = _split_name(data_config, split)
  path = _cache_path(data_config.cache_dir, builder, data_config.data_dir, name)
  source = tfds.data_source(builder.name, data_dir=data_config.data_dir, split=name, download=False)
  if os.path.exists(path) or np.array_equal(rows, np.arange(len(source))):
    images, labels = _load_split(builder, data_config, name)
    return images[rows], labels[rows]
  return _decode_rows(source, _feature_keys(builder), rows)
