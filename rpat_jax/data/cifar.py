"""CIFAR-10 and CIFAR-100 from their canonical python-pickle release: the tarballs of the CIFAR page, or
the folders they extract to (torchvision's `cifar-10-batches-py` / `cifar-100-python`).

Rows keep the canonical order: the train split is data_batch_1 ... data_batch_5 (CIFAR-100: `train`), the
test split `test_batch` (`test`), each file's rows in order, so row i here is row i of the source. The
pickles are read with an unpickler that admits only the numpy array types they hold.
"""

import dataclasses
import io
import os
import pickle
import tarfile
import zlib
from typing import Dict, List, Tuple

import numpy as np


class SourceError(ValueError):
  """A CIFAR source that cannot be read: the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Release:
  """One dataset's canonical release and its TFDS catalog entry."""
  name: str  # The TFDS catalog name.
  version: str  # The TFDS catalog version, so that `tfds.data_source(name)` finds the files.
  url: str
  md5: str  # Published checksum of the tarball.
  folder: str  # What the tarball extracts to.
  splits: Dict[str, Tuple[str, ...]]  # split -> files, in canonical order.
  meta: str  # The file with the class names.
  labels: Dict[str, bytes]  # feature -> the pickle's key.
  names: Dict[str, bytes]  # feature -> the meta pickle's key of its class names.
  homepage: str = 'https://www.cs.toronto.edu/~kriz/cifar.html'


RELEASES = {
    'cifar10': Release(
        name='cifar10', version='3.0.2', url='https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',
        md5='c58f30108f718f92721af3b95e74349a', folder='cifar-10-batches-py',
        splits={'train': tuple(f'data_batch_{i}' for i in range(1, 6)), 'test': ('test_batch',)},
        meta='batches.meta', labels={'label': b'labels'}, names={'label': b'label_names'}),
    'cifar100': Release(
        name='cifar100', version='3.0.2', url='https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz',
        md5='eb9058c3a382ffc7106e4002c42a8d85', folder='cifar-100-python',
        splits={'train': ('train',), 'test': ('test',)}, meta='meta',
        labels={'label': b'fine_labels', 'coarse_label': b'coarse_labels'},
        names={'label': b'fine_label_names', 'coarse_label': b'coarse_label_names'}),
}
CITATION = ('@TECHREPORT{Krizhevsky09learningmultiple, author = {Alex Krizhevsky}, title = {Learning multiple '
            'layers of features from tiny images}, institution = {}, year = {2009}}')


class _ArraysOnly(pickle.Unpickler):
  """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses every other global."""
  ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
             ('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', 'scalar'),
             ('numpy._core.multiarray', 'scalar'), ('_codecs', 'encode')}

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f'a global {module}.{name}, which a CIFAR pickle does not hold')
    return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
  try:
    value = _ArraysOnly(io.BytesIO(data), encoding='bytes').load()
  except Exception as error:  # Unpickling raises many types on bad bytes.
    raise SourceError(f'{where} is not a CIFAR python pickle ({type(error).__name__}: {error})') from error
  if not isinstance(value, dict):
    raise SourceError(f'{where} is not a CIFAR python pickle (it holds a {type(value).__name__}, not a dict)')
  return value


class _Reader:
  """The files of a release, from a tarball (read once, members by name) or an extracted folder."""

  def __init__(self, release: Release, source: str):
    self._release, self._source, self._files = release, source, None
    if os.path.isdir(source):
      folder = os.path.join(source, release.folder)
      self._folder = folder if os.path.isdir(folder) else source  # The folder itself, or its parent.
    elif os.path.isfile(source):
      self._folder = None
      wanted = {f'{release.folder}/{name}' for names in release.splits.values() for name in names}
      wanted.add(f'{release.folder}/{release.meta}')
      self._files = {}
      try:
        with tarfile.open(source, 'r:*') as archive:
          for member in archive:
            name = member.name.lstrip('./')
            if name in wanted and member.isfile():
              self._files[os.path.basename(name)] = archive.extractfile(member).read()
      except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise SourceError(f'{source} is not a complete {release.folder} tarball (truncated or damaged: '
                          f'{type(error).__name__}: {error})') from error
    else:
      raise SourceError(f'{source}: no such file or folder')

  def read(self, name: str) -> dict:
    if self._files is not None:
      if name not in self._files:
        raise SourceError(f'{self._source} has no {self._release.folder}/{name}: not a complete {self._release.name} '
                          'python tarball')
      return _unpickle(self._files[name], f'{self._source}:{self._release.folder}/{name}')
    path = os.path.join(self._folder, name)
    if not os.path.isfile(path):
      raise SourceError(f'{self._folder} is missing {name}: not a complete {self._release.folder} folder')
    with open(path, 'rb') as f:
      return _unpickle(f.read(), path)


def _rows(batch: dict, release: Release, where: str) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
  """uint8 [N, 32, 32, 3] images (the pickle's rows are 1024 red, 1024 green, 1024 blue values) and labels."""
  data = batch.get(b'data')
  if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
    raise SourceError(f'{where}: its data is not uint8 [N, 3072]')
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  labels = {}
  for feature, key in release.labels.items():
    values = np.asarray(batch.get(key, []), np.int64)
    if values.shape != (len(images),):
      raise SourceError(f'{where}: {key.decode()} has {values.size} labels for {len(images)} images')
    labels[feature] = values
  return images, labels


def read(name: str, source: str) -> Tuple[Dict[str, Tuple[np.ndarray, Dict[str, np.ndarray]]], Dict[str, List[str]]]:
  """({split: (images, {feature: labels})}, {feature: class names}) of a tarball or folder."""
  release = RELEASES[name]
  reader = _Reader(release, source)
  meta = reader.read(release.meta)
  names = {}
  for feature, key in release.names.items():
    if key not in meta:
      raise SourceError(f'{source}: {release.meta} has no {key.decode()}')
    names[feature] = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]
  splits = {}
  for split, files in release.splits.items():
    parts = [_rows(reader.read(f), release, f'{source}:{f}') for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = {feature: np.concatenate([p[1][feature] for p in parts]) for feature in release.labels}
    for feature, values in labels.items():
      if values.min(initial=0) < 0 or values.max(initial=0) >= len(names[feature]):
        raise SourceError(f'{source}: {split} {feature} values outside 0..{len(names[feature]) - 1}')
    splits[split] = (images, labels)
  return splits, names
