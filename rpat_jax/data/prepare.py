"""CIFAR-10 and CIFAR-100 as TFDS ArrayRecord datasets, prepared without TensorFlow.

  python -m rpat_jax.data.prepare cifar10 --data_dir=~/tensorflow_datasets     # downloads the tarball
  python -m rpat_jax.data.prepare cifar100 --source=/data/cifar-100-python.tar.gz
  python -m rpat_jax.data.prepare cifar10 --source=/data/cifar-10-batches-py    # torchvision's folder

The dataset is written under the TFDS catalog's name and version with the catalog's features (`id`,
`image`, `label`; CIFAR-100 also `coarse_label`), so `tfds.data_source('cifar10', data_dir=...)` reads it.
Record i of a split is row i of the source (data_batch_1 ... 5, then test_batch; CIFAR-100 train, test).
`--source` takes a URL, a tarball or an extracted folder; a tarball's MD5 is checked against the
published one unless `--md5=HEX|none` says otherwise. One process prepares a dataset at a time (a lock in
the data_dir; the others wait and then find it prepared), and TFDS renames a complete dataset into place,
so a failed or interrupted preparation leaves nothing a later run would take for a dataset. Training on
`cifar10` / `cifar100` calls `ensure_prepared` first. `--convert_tfrecord=OUT_DIR` instead copies a dataset
that `tfds.load` prepared as TFRecord into OUT_DIR as ArrayRecord (needs TensorFlow). Bad input gives one line,
`rpat_jax.data.prepare: error: ...`, and exit status 2.
"""

import contextlib
import errno
import fcntl
import hashlib
import http.client
import os
import sys
import tempfile
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from absl import flags
from absl import logging

from rpat_jax.data import arrayrecord
from rpat_jax.data import cifar
from rpat_jax.data import dataset
from rpat_jax.run import paths

PROG = 'rpat_jax.data.prepare'
NAMES = tuple(cifar.RELEASES)


class PrepareError(OSError):
  """A dataset that could not be prepared; the message is one line saying why and what to do."""


def default_data_dir() -> str:
  """TFDS's default data_dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')


def _is_url(source: str) -> bool:
  return urllib.parse.urlparse(source).scheme in ('http', 'https', 'ftp', 'file')


def md5_of(path: str) -> str:
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _check_md5(path: str, expected: str, what: str) -> None:
  if expected == 'none':
    return
  actual = md5_of(path)
  if actual != expected.lower():
    raise PrepareError(f'{what} has MD5 {actual}, not the expected {expected.lower()}: a damaged or different '
                       'file (--md5=none accepts a copy you trust)')


def download(url: str, path: str, expected_md5: str, *, progress: bool = True, timeout: float = 60) -> str:
  """Downloads `url` to `path` through a temporary file, with a progress bar and the MD5 check; a failed,
  interrupted or wrong download leaves nothing at `path`."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = f'{path}.part-{os.getpid()}'
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, 'wb') as out:
      total = int(response.headers.get('Content-Length') or 0) or None
      with tqdm(total=total, unit='B', unit_scale=True, desc=f'Downloading {os.path.basename(path)}',
                disable=not progress, file=sys.stderr) as bar:
        for block in iter(lambda: response.read(1 << 20), b''):
          out.write(block)
          bar.update(len(block))
      if total is not None and out.tell() != total:
        raise PrepareError(f'the download of {url} stopped after {out.tell()} of {total} bytes')
    _check_md5(partial, expected_md5, f'the download of {url}')
    os.replace(partial, path)
  except PrepareError:
    raise
  except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
    if isinstance(error, http.client.IncompleteRead):
      reason = f'the connection closed after {len(error.partial)} bytes of this block'
    elif isinstance(error, urllib.error.HTTPError):
      reason = f'HTTP {error.code} {error.reason}'
    else:
      reason = getattr(error, 'reason', None) or getattr(error, 'strerror', None) or error
    raise PrepareError(f'cannot download {url}: {reason}') from error
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return path


@contextlib.contextmanager
def _one_writer(data_dir: str, name: str):
  """Holds an exclusive lock on data_dir/.<name>.prepare.lock; waits (saying so) while another process
  prepares the same dataset. A file system without locks goes ahead with a warning."""
  path = os.path.join(data_dir, f'.{name}.prepare.lock')
  try:
    handle = open(path, 'a+')  # pylint: disable=consider-using-with
  except OSError as error:
    raise PrepareError(f'cannot write in {data_dir}: {error.strerror}') from error
  with handle:
    try:
      try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        handle.seek(0)
        logging.info('Waiting for %s: another process is preparing %s in %s.', handle.read().strip() or 'a process',
                     name, data_dir)
        fcntl.flock(handle, fcntl.LOCK_EX)
      handle.seek(0)
      handle.truncate()
      handle.write(f'pid {os.getpid()} on {os.uname().nodename}')
      handle.flush()
    except OSError as error:
      if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      logging.warning('%s cannot be locked (%s); preparing %s without a lock.', path, error.strerror, name)
    try:
      yield
    finally:
      handle.truncate(0)  # The lock itself goes with the file's closing.


def _features(names):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  features = {'id': tfds.features.Text(), 'image': tfds.features.Image(shape=(32, 32, 3)),
              'label': tfds.features.ClassLabel(names=names['label'])}
  if 'coarse_label' in names:
    features['coarse_label'] = tfds.features.ClassLabel(names=names['coarse_label'])
  return tfds.features.FeaturesDict(features)


def _write(name: str, data_dir: str, source: str) -> str:
  release = cifar.RELEASES[name]
  try:
    splits, names = cifar.read(name, source)
  except cifar.SourceError as error:
    raise PrepareError(str(error)) from error

  def examples(split):
    images, labels = splits[split]

    def generate():
      for i in range(len(images)):
        example = {'id': f'{split}_{i:05d}', 'image': images[i]}
        example.update({feature: int(values[i]) for feature, values in labels.items()})
        yield example
    return generate

  try:
    return arrayrecord.write(name, release.version, data_dir, _features(names),
                             {split: examples(split) for split in splits}, homepage=release.homepage,
                             citation=cifar.CITATION,
                             description=f'{name} from {os.path.basename(source)}, rows in canonical order.')
  except (OSError, RuntimeError) as error:  # TFDS wraps a failed shard write in a RuntimeError.
    reason = error.strerror if isinstance(error, OSError) and error.strerror else ' '.join(str(error).split())
    raise PrepareError(f'writing {name} into {data_dir} failed: {reason}; nothing was left there as a prepared '
                       'dataset') from error


def prepare(name: str, data_dir: Optional[str] = None, *, source: Optional[str] = None,
            md5: Optional[str] = None, progress: bool = True) -> str:
  """Prepares `name` ('cifar10' or 'cifar100') in data_dir from `source` (None: the canonical URL);
  returns the dataset's directory. Does nothing when it is prepared already."""
  if name not in cifar.RELEASES:
    raise PrepareError(f'dataset {name!r} cannot be prepared here; allowed: {", ".join(NAMES)}')
  if md5 is not None and md5 != 'none' and (len(md5) != 32 or any(c not in '0123456789abcdefABCDEF' for c in md5)):
    raise PrepareError(f'--md5={md5} is not 32 hex digits or none')
  release = cifar.RELEASES[name]
  if data_dir and paths.is_remote(data_dir):
    return _prepare_in_bucket(name, data_dir, source=source, md5=md5, progress=progress)
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as error:
    raise PrepareError(f'--data_dir={data_dir} cannot be created: {error.strerror}') from error
  expected = md5 or release.md5
  if dataset.dataset_available(name, data_dir):  # Prepared (perhaps read-only): no lock needed.
    logging.info('%s is prepared in %s already.', name, data_dir)
    return os.path.join(data_dir, name, release.version)
  if dataset.prepared_as_tfrecord(name, data_dir):  # TFDS would keep those files and write nothing.
    raise PrepareError(str(dataset.DatasetNotFoundError(name, data_dir)))
  with _one_writer(data_dir, name):
    if dataset.dataset_available(name, data_dir):
      logging.info('%s is prepared in %s already.', name, data_dir)
      return os.path.join(data_dir, name, release.version)
    if source is None or _is_url(source):
      url = source or release.url
      path = os.path.join(data_dir, 'downloads', os.path.basename(urllib.parse.urlparse(url).path) or name)
      if not (os.path.isfile(path) and (expected == 'none' or md5_of(path) == expected.lower())):
        logging.info('Downloading %s to %s.', url, path)
        download(url, path, expected, progress=progress)
      source = path
    elif os.path.isfile(source):
      _check_md5(source, expected, source)
    elif not os.path.isdir(source):
      raise PrepareError(f'--source={source}: no such file, folder or URL')
    started = time.time()
    where = _write(name, data_dir, source)
    logging.info('Prepared %s in %s from %s in %.0f s.', name, where, source, time.time() - started)
    return where


def _prepare_in_bucket(name: str, data_dir: str, **kwargs) -> str:
  """Prepares `name` in a local temporary folder and uploads it under the URI `data_dir`, its
  dataset_info.json last: TFDS (and `dataset_available`) take a dataset for prepared once that file is
  there, so an interrupted upload is never read. Two machines preparing at once upload the same files."""
  release = cifar.RELEASES[name]
  target = f'{data_dir.rstrip("/")}/{name}/{release.version}'
  if dataset.dataset_available(name, data_dir):
    logging.info('%s is prepared in %s already.', name, data_dir)
    return target
  with tempfile.TemporaryDirectory(prefix=f'rpat_prepare_{name}_') as local:
    where = prepare(name, local, **kwargs)
    logging.info('Uploading %s to %s.', where, target)
    try:
      paths.upload(where, target, last='dataset_info.json')
    except Exception as error:  # pylint: disable=broad-except  # gcsfs and TensorFlow raise their own kinds.
      raise PrepareError(f'uploading {name} to {target} failed: {paths.describe_error(error)}; it is not '
                         'taken for prepared until its dataset_info.json is there (run the command again)') from error
  return target


def convert_tfrecord(name: str, data_dir: Optional[str], out_dir: str) -> str:
  """Copies a TFDS dataset prepared as TFRecord (what `tfds.load` leaves) into `out_dir` as ArrayRecord,
  record for record in the TFRecord files' order, with its features and version; reading TFRecords needs
  TensorFlow. The source is left as it is (TFDS's in-place `convert_format` needs Apache Beam, and the
  alternative format it adds is not read back by tfds.data_source 4.9). Returns the new directory."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if out_dir == data_dir:
    raise PrepareError(f'--out_dir={out_dir} is the TFRecord data_dir; give another directory')
  if not dataset.prepared_as_tfrecord(name, data_dir):
    raise PrepareError(f'{name} is not prepared as TFRecord in {data_dir}: nothing to convert')
  try:
    import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as error:
    elsewhere = dataset.how_to_prepare(name, 'OTHER_DIR')
    raise PrepareError(f'reading TFRecord files needs TensorFlow (pip install tensorflow); or prepare {name} '
                       f'into another data_dir: {elsewhere}') from error
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  source = tfds.builder(name, data_dir=data_dir)
  info = source.info

  def records(split):
    return lambda: iter(tfds.as_numpy(source.as_dataset(split=split, shuffle_files=False)))

  os.makedirs(out_dir, exist_ok=True)
  with _one_writer(out_dir, name):
    if dataset.dataset_available(name, out_dir):
      return os.path.join(out_dir, name, str(info.version))
    return arrayrecord.write(name, str(info.version), out_dir, info.features,
                             {split: records(split) for split in info.splits}, description=info.description,
                             homepage=info.homepage, citation=info.citation, supervised_keys=info.supervised_keys)


def ensure_prepared(data_config) -> None:
  """Before training: prepares CIFAR-10/100 in data.data_dir (or TFDS's default) if it is not there,
  downloading the canonical tarball; offline, one line says which command to run with --source."""
  name = data_config.name
  if name not in cifar.RELEASES or dataset.dataset_available(name, data_config.data_dir):
    return
  if dataset.prepared_as_tfrecord(name, data_config.data_dir):
    raise dataset.DatasetNotFoundError(name, data_config.data_dir)  # Its message says how to convert.
  data_dir = data_config.data_dir or default_data_dir()
  if paths.is_remote(data_dir):  # Not on every worker of a pod at once: prepared once, by a command.
    raise PrepareError(f'{name} is not prepared in data.data_dir={data_dir}; prepare it once with `python -m '
                       f'rpat_jax.data.prepare {name} --data_dir={data_dir}` (--source=PATH offline)')
  logging.info('%s is not prepared in %s: preparing it now (python -m rpat_jax.data.prepare).', name, data_dir)
  try:
    prepare(name, data_dir)
  except PrepareError as error:
    raise PrepareError(f'{error}; without internet, copy {os.path.basename(cifar.RELEASES[name].url)} (or the '
                       f'extracted folder) here and run `python -m rpat_jax.data.prepare {name} '
                       f'--data_dir={data_dir} --source=PATH`') from error


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  values = dict(flag_values=flag_values)
  return types.SimpleNamespace(
      data_dir=flags.DEFINE_string('data_dir', None, 'The TFDS data_dir to write into (default: $TFDS_DATA_DIR '
                                   'or ~/tensorflow_datasets).', **values),
      source=flags.DEFINE_string('source', None, 'A URL, a tarball or an extracted folder (default: the '
                                 'canonical URL).', **values),
      md5=flags.DEFINE_string('md5', None, "The tarball's expected MD5 (default: the published one), or none.",
                              **values),
      convert_tfrecord=flags.DEFINE_string('convert_tfrecord', None, 'Instead, copy a TFDS dataset prepared as '
                                           'TFRecord in --data_dir into this data_dir as ArrayRecord (any name; '
                                           'needs TensorFlow).', **values))


def main(argv, cli) -> None:
  from rpat_jax.run import cli as cli_lib  # pylint: disable=import-outside-toplevel
  if len(argv) != 2:
    cli_lib.fail(PROG, f'give one dataset name ({", ".join(NAMES)}), e.g. `python -m {PROG} cifar10`')
  try:
    if cli.convert_tfrecord.value:
      print(convert_tfrecord(argv[1], cli.data_dir.value, cli.convert_tfrecord.value))
      return
    print(prepare(argv[1], cli.data_dir.value, source=cli.source.value, md5=cli.md5.value))
  except PrepareError as error:
    cli_lib.fail(PROG, str(error))


if __name__ == '__main__':
  from rpat_jax.run import cli as _cli  # pylint: disable=ungrouped-imports
  _cli.run_app(PROG, main, define_flags())
