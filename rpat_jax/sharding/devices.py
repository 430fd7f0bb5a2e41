"""The devices a run's programs are built for: one list that a run, its evaluation and `aot` all read.

A run uses every device of every process (`jax.devices()`). `python -m rpat_jax.aot` builds the same
programs for a compile-only TPU slice or GPU host (`jax.experimental.topologies`) by calling them inside
`building_for(devices)`: the mesh, the batch checks and the CPU gate then see the target's devices, so
what it compiles is the code a run on that hardware runs.
"""

import contextlib
import threading
from typing import Iterator, Optional, Sequence

import jax

_target = threading.local()


def current() -> Sequence[jax.Device]:
  """The devices programs are built for now: a target's inside `building_for`, else every device."""
  devices = getattr(_target, 'devices', None)
  return devices if devices is not None else jax.devices()


def count() -> int:
  return len(current())


def platform() -> str:
  """'cpu', 'gpu' or 'tpu': the platform of `current()`."""
  devices = getattr(_target, 'devices', None)
  if devices is None:
    return jax.default_backend()
  return 'gpu' if devices[0].platform in ('cuda', 'rocm', 'gpu') else devices[0].platform


@contextlib.contextmanager
def building_for(devices: Optional[Sequence[jax.Device]]) -> Iterator[None]:
  """Within: programs are built for `devices` (None: every device of this run)."""
  previous = getattr(_target, 'devices', None)
  _target.devices = list(devices) if devices is not None else None
  try:
    yield
  finally:
    _target.devices = previous
