"""XLA:CPU's convolutions on its own (Eigen) kernels, not YNNPACK: an XLA_FLAGS option set at import.

jaxlib 0.10 hands every convolution on CPU to YNNPACK; XLA's own Eigen kernels ran ResNet-18's and the
quick-start CNN's convolutions faster on this project's CPU (docs/benchmarks.md, CPU table). So importing
the package asks XLA for YNNPACK dots only (`--xla_cpu_experimental_ynn_fusion_type=dot`), before JAX
starts its CPU backend, and only:
- where the default backend is expected to be the CPU (`cpu.expected_before_start`): on a GPU or TPU host
  the environment is left alone;
- unless XLA_FLAGS already names that option: the user's choice wins;
- on the jaxlib versions this was measured on (an option XLA does not know stops it at start-up).
The two kernels compute the same convolution; only float rounding differs. A process that started JAX's
CPU backend before importing rpat_jax keeps YNNPACK (slower, not wrong).
"""

import os
from importlib import metadata
from typing import Optional

from rpat_jax import cpu

OPTION = '--xla_cpu_experimental_ynn_fusion_type'
VALUE = 'dot'
# jaxlib versions whose XLA:CPU has the option and was measured (requirements.txt pins one of them).
MEASURED_JAXLIB = ('0.10.2',)


def installed_jaxlib() -> Optional[str]:
  """The installed jaxlib's version, or None when it is not installed."""
  try:
    return metadata.version('jaxlib')
  except metadata.PackageNotFoundError:
    return None


def with_eigen_convolutions(xla_flags: str, jaxlib_version: Optional[str]) -> str:
  """xla_flags with OPTION=VALUE added, unless it already names OPTION or jaxlib_version was not measured."""
  if jaxlib_version not in MEASURED_JAXLIB or OPTION + '=' in xla_flags:
    return xla_flags
  return f'{xla_flags} {OPTION}={VALUE}'.strip()


def prefer_eigen_convolutions() -> None:
  """Sets XLA_FLAGS in this process (and so in those it starts) as with_eigen_convolutions says, where the
  CPU is expected to be the default backend; elsewhere it changes nothing."""
  if not cpu.expected_before_start():
    return
  flags = os.environ.get('XLA_FLAGS', '')
  updated = with_eigen_convolutions(flags, installed_jaxlib())
  if updated != flags:
    os.environ['XLA_FLAGS'] = updated
