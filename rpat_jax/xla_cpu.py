"""XLA:CPU's convolutions on its own (Eigen) kernels, not YNNPACK: an XLA_FLAGS option set at import.

jaxlib 0.10 hands every convolution on CPU to YNNPACK (`__ynn_fusion` in the compiled program). On this
project's 2-core CPU, ResNet-18's convolutions at batch 64 (forward pass plus input gradient) took 454 ms
in all on YNNPACK against 345 ms on XLA's own Eigen kernels (PyTorch: 317 ms), 1.6x on the 32x32 layers and
up to 13% slower on two small ones; the quick-start CNN's 22.0 against 17.6 ms
(`docs/xla_cpu_convolutions.py`, docs/benchmarks.md). So the package asks XLA for YNNPACK dots only
(`--xla_cpu_experimental_ynn_fusion_type=dot`) when it is imported, before JAX starts its CPU backend:
- unless XLA_FLAGS already names that option: the user's choice wins;
- only on the jaxlib versions this was measured on (an option XLA does not know stops it at start-up);
- GPUs and TPUs ignore XLA:CPU options. The two kernels compute the same convolution; only float rounding
  differs.
A process that started JAX's CPU backend before importing rpat_jax keeps YNNPACK (slower, not wrong).
"""

import os
from importlib import metadata
from typing import Optional

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
  """Sets XLA_FLAGS in this process (and so in those it starts) as with_eigen_convolutions says."""
  flags = os.environ.get('XLA_FLAGS', '')
  updated = with_eigen_convolutions(flags, installed_jaxlib())
  if updated != flags:
    os.environ['XLA_FLAGS'] = updated
