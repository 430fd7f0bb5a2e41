"""SIGTERM and SIGINT end a run at a step boundary with a checkpoint of that step, not mid-write.

TPU VMs and SLURM preempt with SIGTERM and a grace period; Ctrl-C sends SIGINT. The handler only records
the signal; the training loop asks `requested()` between steps (a host-side flag, no device sync), saves
the exact step and raises `Preempted`. A second SIGINT while that happens interrupts at once, as Ctrl-C
usually does. The exit status is 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), what a
scheduler expects of a process its signal ended.
"""

import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on a signal after saving its current step; `exit_status` is 128 + signal."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_status = 128 + signum


class StopSignals:
  """Installs the handlers for the duration of a `with` block (main thread only); `signum` is the first
  signal received, or None."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}

  def requested(self) -> bool:
    return self.signum is not None

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:  # A second Ctrl-C: stop now.
      raise KeyboardInterrupt
    self.signum = self.signum or signum

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    return False

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ''
