"""One writer per workdir: a second run (or evaluation) on a directory in use refuses at once.

Local directories: an exclusive `flock` on `<dir>/lock`, which the kernel releases when the holder dies
(even by `kill -9`), so a dead run never blocks the next. The file records the holder (host, pid, command,
start time) for the refusal's message. Object stores have no locks: there the file is the lock, refreshed
by the holder (`refresh`) and taken over once it is older than `STALE_SECONDS` or its holder is a dead
process on this host; so are local file systems that refuse `flock`.
"""

import datetime
import json
import os
import socket
import sys
import time
from typing import Optional

from rpat_jax.run import paths

STALE_SECONDS = 15 * 60


class WorkdirBusyError(paths.PathError):
  """The workdir is held by another live run; the message names the holder."""


def _holder() -> dict:
  return {'host': socket.gethostname(), 'pid': os.getpid(), 'command': ' '.join(sys.argv[:1] + sys.argv[1:3]),
          'since': datetime.datetime.now().isoformat(timespec='seconds'), 'heartbeat': time.time()}


def _describe(holder: Optional[dict]) -> str:
  if not holder:
    return 'another process'
  return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} ({holder.get('command')})"


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError):
    return True
  return True


class WorkdirLock:
  """Holds `<directory>/lock` until `release()`; raises WorkdirBusyError if a live holder has it."""

  def __init__(self, directory: paths.PathLike, what: str = 'workdir'):
    self.path = paths.as_path(directory) / 'lock'
    self._what, self._file, self._last_refresh = what, None, 0.0
    if paths.is_remote(self.path):
      self._acquire_remote()
    else:
      self._acquire_local()

  def _read(self) -> Optional[dict]:
    try:
      return json.loads(self.path.read_text())
    except Exception:  # pylint: disable=broad-except  # Absent, empty or half-written: no holder known.
      return None

  def _refuse(self, holder):
    raise WorkdirBusyError(f'{self._what} {self.path.parent} is in use by {_describe(holder)}; wait for it to '
                           'finish or use another directory')

  def _acquire_local(self):
    import fcntl  # pylint: disable=import-outside-toplevel  # POSIX only, like the rest of the toolchain.
    handle = open(os.fspath(self.path), 'a+')  # pylint: disable=consider-using-with  # Held until release().
    try:
      fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.close()
      self._refuse(self._read())
    except OSError:  # A file system without flock (some NFS mounts): the heartbeat file, as on object stores.
      handle.close()
      self._acquire_remote()
      return
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_holder()))
    handle.flush()
    self._file = handle

  def _acquire_remote(self):
    holder = self._read()
    if holder is not None:
      same_host = holder.get('host') == socket.gethostname()
      fresh = time.time() - float(holder.get('heartbeat', 0)) < STALE_SECONDS
      if fresh and not (same_host and not _pid_alive(holder.get('pid'))):
        self._refuse(holder)
    self._write_remote()

  def _write_remote(self):
    self.path.write_text(json.dumps(_holder()))
    self._last_refresh = time.time()

  def refresh(self) -> None:
    """Renews a remote lock's heartbeat (at most once a minute); nothing to do for a local flock."""
    if self._file is None and time.time() - self._last_refresh > 60:
      self._write_remote()

  def release(self) -> None:
    if self._file is not None:
      self._file.close()  # Closing drops the flock; the file stays, naming the last holder.
      self._file = None
    elif self._last_refresh:
      self.path.unlink(missing_ok=True)
      self._last_refresh = 0.0
