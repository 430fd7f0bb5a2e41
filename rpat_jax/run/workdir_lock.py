"""One writer per workdir: a second run (or evaluation) on a directory in use refuses at once.

Local directories: an exclusive `flock` on `<dir>/lock`, which the kernel releases when the holder dies
(even by `kill -9`), so a dead run never blocks the next. The file records the holder (host, pid, command,
start time) for the refusal's message. Object stores have no locks: there the file is the lock, its
heartbeat renewed every `REFRESH_SECONDS` by a thread of the holder (through compiles, epochs and long
evaluations alike), and taken over once it is older than `STALE_SECONDS` or its holder is a dead process on
this host; so are local file systems that refuse `flock`. A store that fails a renewal (an outage) is
retried at the next one. Two runs starting within the same second could both write the file: each reads
it back and only the one whose record is there goes on.
"""

import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Optional

from absl import logging

from rpat_jax.run import paths

STALE_SECONDS = 15 * 60
REFRESH_SECONDS = 60


class WorkdirBusyError(paths.PathError):
  """The workdir is held by another live run; the message names the holder."""


def _holder(token: str = '') -> dict:
  return {'host': socket.gethostname(), 'pid': os.getpid(), 'command': ' '.join(sys.argv[:1] + sys.argv[1:3]),
          'since': datetime.datetime.now().isoformat(timespec='seconds'), 'heartbeat': time.time(), 'token': token}


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
    self._what, self._file, self._token = what, None, uuid.uuid4().hex
    self._stop_heartbeat: Optional[threading.Event] = None
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
    written = self._read()
    if (written or {}).get('token') != self._token:  # Another run wrote the file just after us: it holds it.
      self._refuse(written)
    self._stop_heartbeat = threading.Event()
    threading.Thread(target=self._heartbeat, args=(self._stop_heartbeat,), daemon=True,
                     name='rpat-workdir-lock').start()

  def _write_remote(self):
    self.path.write_text(json.dumps(_holder(self._token)))

  def _heartbeat(self, stop: threading.Event):
    while not stop.wait(REFRESH_SECONDS):
      try:
        holder = self._read()
        if holder is not None and holder.get('token') != self._token:  # Taken over after going stale.
          logging.error('The lock %s was taken over by %s; this run no longer holds its directory.', self.path,
                        _describe(holder))
          return
        self._write_remote()
      except Exception as error:  # pylint: disable=broad-except  # An outage: the next renewal tries again.
        logging.warning('Renewing the lock %s failed (%s); retrying in %d s.', self.path,
                        paths.describe_error(error), REFRESH_SECONDS)

  def release(self) -> None:
    if self._file is not None:
      self._file.close()  # Closing drops the flock; the file stays, naming the last holder.
      self._file = None
    elif self._stop_heartbeat is not None:
      self._stop_heartbeat.set()
      self._stop_heartbeat = None
      try:
        holder = self._read()
        if holder is None or holder.get('token') == self._token:
          self.path.unlink(missing_ok=True)
      except Exception as error:  # pylint: disable=broad-except  # The heartbeat goes stale instead.
        logging.warning('Removing the lock %s failed (%s); it goes stale in %d minutes.', self.path,
                        paths.describe_error(error), STALE_SECONDS // 60)
