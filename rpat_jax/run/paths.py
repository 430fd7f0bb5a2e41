"""Every file a run or an evaluation reads or writes goes through here: local paths and object stores alike.

A workdir is an `etils.epath.Path`: a local directory (made absolute) or a URI such as `gs://BUCKET/run`
(served by gcsfs, a requirement, with the settings below, or TensorFlow's gfile when it is installed;
Orbax writes the arrays of a checkpoint there with TensorStore's own GCS client). No module opens a
workdir file with `open` or `os.path`, so a remote workdir never falls back to a local directory named
`gs:`. Writes of whole files are atomic where the store allows: locally a temporary file renamed over the
target; an object store publishes an object only when its upload completes.
"""

import os
import re
import uuid
from typing import Union

import fsspec
import fsspec.config
from etils import epath

# The pinned gcsfs first asks each bucket's layout of the Storage Control API over gRPC; where that API is
# not reachable (an emulator, a network that allows only the JSON API) every process waits 60 s before it
# falls back. Our stores are plain buckets, so the plain client is used unless the user asks otherwise.
os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
# gcsfs caches directory listings per process; the processes of a pod share a workdir, and one of them
# moving or deleting a checkpoint must be seen by the others' next listing (Orbax lists steps to agree on
# them; a stale list leaves the processes waiting at different barriers).
for _protocol in ('gs', 'gcs'):
  fsspec.config.conf.setdefault(_protocol, {}).setdefault('use_listings_cache', False)
  # gcsfs with a retry budget that outlasts a short outage (gcs_client.py), imported on first use.
  fsspec.register_implementation(_protocol, 'rpat_jax.run.gcs_client.PatientGCSFileSystem', clobber=True)

PathLike = Union[str, os.PathLike, epath.Path]


class PathError(OSError):
  """A workdir or file that cannot be used; the message is one line naming it."""


def as_path(path: PathLike) -> epath.Path:
  """An epath.Path: a URI stays as given, a local path becomes absolute (with ~ expanded)."""
  if isinstance(path, epath.Path) and is_remote(path):
    return path
  text = os.fspath(path)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_remote(path: PathLike) -> bool:
  """True for a URI (gs://, s3://, ...), False for a local path."""
  return '://' in str(path)


def describe_error(error: BaseException) -> str:
  """The first line of an error, without the traceback's noise: what a one-line message should quote."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  os_error = re.search(r': ([^:\[\]]+) \[os_error_code=.(\d+).\]', str(error))  # TensorStore's I/O errors.
  if os_error:
    return f'{os_error.group(1).strip()} (errno {os_error.group(2)})'
  text = str(error).strip().splitlines()
  line = text[0].split(' See full TensorStore details')[0] if text else type(error).__name__
  return line if len(line) <= 240 else line[:237] + '...'


def write_atomic(path: PathLike, data: Union[str, bytes]) -> None:
  """Writes a whole file so that a reader sees the old content or the new, never a part of it."""
  path = as_path(path)
  mode = 'wb' if isinstance(data, bytes) else 'w'
  if is_remote(path):  # An object store publishes the object when the upload completes.
    with path.open(mode) as f:
      f.write(data)
    return
  temporary = path.parent / f'.{path.name}.{uuid.uuid4().hex[:8]}.tmp'
  try:
    with temporary.open(mode) as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    temporary.replace(path)
  finally:
    if temporary.exists():
      temporary.unlink()


def make_dir(path: PathLike, what: str = 'workdir') -> epath.Path:
  """Creates a directory (and its parents) and proves it is writable, or raises PathError in one line.

  Called before anything is built or compiled, so a read-only disk, a path under /proc or an unreachable
  bucket fails in seconds, not after the first epoch.
  """
  path = as_path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_probe.{uuid.uuid4().hex[:8]}'
    probe.write_text('ok')
    probe.unlink()
  except ImportError as error:  # epath needs gcsfs (or TensorFlow) for gs://.
    raise PathError(f'{what} {path} cannot be reached: {describe_error(error)}') from None
  except Exception as error:  # pylint: disable=broad-except  # Every backend raises its own kind.
    raise PathError(f'{what} {path} is not writable: {describe_error(error)}') from None
  return path


def move(source: PathLike, target: PathLike) -> epath.Path:
  """Moves a file or a directory to `target` (its parent made). A local one is renamed; an object store
  has no directories and no rename, so every object is copied, then the source's are deleted (a reader
  may see both for a moment, never neither)."""
  source, target = as_path(source), as_path(target)
  if not is_remote(source):
    target.parent.mkdir(parents=True, exist_ok=True)
    return source.rename(target)
  store, source_key = fsspec.core.url_to_fs(str(source))  # What epath uses for URIs.
  _, target_key = fsspec.core.url_to_fs(str(target))
  store.copy(source_key, target_key, recursive=store.isdir(source_key))
  store.rm(source_key, recursive=True)
  return target


def copy_to_local(source: PathLike, local_dir: str) -> None:
  """Copies the files under the URI `source` into the existing local folder `local_dir`."""
  store, key = fsspec.core.url_to_fs(str(source))
  store.get(key.rstrip('/') + '/', local_dir.rstrip('/') + '/', recursive=True)


def upload(local_dir: str, target: PathLike, *, last: str = '') -> None:
  """Copies the files of the local folder `local_dir` under the URI `target`; the file named `last` goes
  after all others (a reader that waits for it sees every other file)."""
  store, key = fsspec.core.url_to_fs(str(target))
  files = [os.path.join(folder, name) for folder, _, names in os.walk(local_dir) for name in names]
  for path in sorted(files, key=lambda path: os.path.basename(path) == last):
    store.put_file(path, f'{key.rstrip("/")}/{os.path.relpath(path, local_dir)}')
