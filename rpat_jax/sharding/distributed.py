"""Joining JAX's multi-process runtime (`jax.distributed`), with one-line errors instead of hangs.

`--distributed=auto` (default) joins when the flags name a coordinator or a process count, or when SLURM
runs more than one task; `on` always calls `jax.distributed.initialize` (TPU pods and SLURM fill in the
coordinator, the process count and id themselves); `off` never does. A process that cannot join within
`--init_timeout` seconds (a missing process, an unreachable coordinator, disagreeing process counts)
prints one line and exits 2: the runtime itself would abort with a stack trace, later. After joining,
every process checks that the others run the same process count and the same config.
"""

import hashlib
import os
import sys
import threading
import types
from typing import Optional

import jax
import numpy as np
from absl import flags

MODES = ('auto', 'on', 'off')
EXIT_CODE = 2



def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  """Defines --distributed, --coordinator_address, --num_processes, --process_id and --init_timeout on
  `flag_values` (a binary calls this; importing this module defines nothing); returns their holders."""
  values = dict(flag_values=flag_values)
  return types.SimpleNamespace(
      mode=flags.DEFINE_enum('distributed', 'auto', MODES, 'Join jax.distributed: auto, on or off.', **values),
      coordinator=flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (explicit clusters).',
                                      **values),
      num_processes=flags.DEFINE_integer('num_processes', None, 'Number of processes (explicit clusters).',
                                         **values),
      process_id=flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 (explicit clusters).',
                                      **values),
      timeout=flags.DEFINE_integer('init_timeout', 300, 'Seconds to wait for every process to join.', **values))


class DistributedError(RuntimeError):
  """A multi-process set-up that cannot work; the message says what and how to fix it."""


def _fail(message: str):
  print(f'rpat_jax: error: {message}', file=sys.stderr, flush=True)
  os._exit(EXIT_CODE)  # From a watchdog thread too, and before the runtime's own abort.


def _wanted(mode: str, coordinator: Optional[str], num_processes: Optional[int]) -> bool:
  if mode == 'off':
    return False
  if mode == 'on' or coordinator or num_processes is not None:
    return True
  return int(os.environ.get('SLURM_NTASKS', '1')) > 1


def initialize_from_flags(holders: types.SimpleNamespace) -> None:
  """`initialize` with the values of the flags `define_flags` returned."""
  initialize(holders.mode.value, coordinator=holders.coordinator.value, num_processes=holders.num_processes.value,
             process_id=holders.process_id.value, timeout=holders.timeout.value)


def initialize(mode: str = 'auto', *, coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, timeout: int = 300) -> None:
  """Joins the runtime if `mode` says so (see the module docstring); a no-op for one process."""
  if mode not in MODES:
    raise DistributedError(f'distributed={mode!r}; allowed: {", ".join(MODES)}')
  if not _wanted(mode, coordinator, num_processes):
    return
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f'num_processes={num_processes} must be >= 1')
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise DistributedError(f'process_id={process_id} is outside 0..{num_processes - 1} (num_processes={num_processes})')
  if timeout < 1:
    raise DistributedError(f'init_timeout={timeout} must be >= 1 second')
  # CPU processes exchange data with gloo; GPUs and TPUs use their own collectives.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  where = coordinator or 'the address the cluster environment gives'
  joined = threading.Event()

  def watchdog():
    if not joined.wait(timeout):
      _fail(f'process {process_id if process_id is not None else "?"} could not join the JAX distributed runtime '
            f'at {where} within {timeout}s: a process did not start, the coordinator is unreachable, or the '
            f'processes disagree on --num_processes ({num_processes if num_processes else "from the cluster"})')

  threading.Thread(target=watchdog, daemon=True, name='rpat_jax-join-watchdog').start()
  try:  # The runtime's own deadline is later, so the watchdog's line is what the user sees.
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout + 60)
  except Exception as error:  # E.g. no cluster detected for `--distributed=on`.
    joined.set()
    raise DistributedError(f'jax.distributed.initialize failed: {str(error).splitlines()[0]}') from None
  joined.set()
  if num_processes is not None:
    check_same_everywhere('--num_processes', num_processes)
    if jax.process_count() != num_processes:
      raise DistributedError(f'{jax.process_count()} processes joined, but this one was started with '
                             f'--num_processes={num_processes}')


def check_same_everywhere(name: str, value) -> None:
  """Raises DistributedError unless every process passes the same `value` (compared by a hash)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  digest = np.frombuffer(hashlib.sha256(repr(value).encode()).digest()[:8], np.int32)  # int32: no x64 needed.
  everyone = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
  differing = [index for index, other in enumerate(everyone) if not np.array_equal(other, digest)]
  if differing:
    raise DistributedError(f'{name} differs between processes: process {jax.process_index()} disagrees with '
                           f'process(es) {", ".join(map(str, differing))}; start every process with the same '
                           f'{name}')


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing to wait for with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any: the processes agree on when to stop or save."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


class ProcessZeroRefused(DistributedError):
  """What the other processes raise when process 0's part of the set-up failed (its own line says why)."""


def on_process_zero(setup) -> None:
  """Runs `setup()` on process 0 only (taking a lock, writing a record); if it raises there, every process
  raises, so none waits forever in the next collective."""
  error = None
  if jax.process_index() == 0:
    try:
      setup()
    except Exception as caught:  # pylint: disable=broad-except  # Re-raised below, on every process.
      error = caught
  if any_process(error is not None):
    raise error if error is not None else ProcessZeroRefused('process 0 stopped during set-up; see its message')
