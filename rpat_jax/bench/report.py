"""What every benchmark row carries: the device, the versions, timing statistics, FLOPs and MFU.

FLOPs come from XLA's cost analysis (HloCostAnalysis). It counts a loop body once, whatever its trip
count, so the train step is analysed in the form with the attack's loop written out (`attack.unroll`).
MFU = achieved FLOP/s over the device's dense peak for the compute dtype (PEAK_FLOPS; None = unknown).
"""

import importlib.metadata
import platform
from typing import Dict, Optional, Sequence

import jax
import numpy as np

# Dense (no sparsity) peak FLOP/s by device kind and compute dtype, from the vendors' data sheets. float32
# on NVIDIA GPUs is the TF32 tensor-core peak: XLA runs float32 convolutions and matmuls at its default
# precision, which uses TF32 there. Matched in order, by substring of `device_kind`.
PEAK_FLOPS = (
    ('H100 PCIe', {'bfloat16': 756e12, 'float32': 378e12}),
    ('H100', {'bfloat16': 989.4e12, 'float32': 494.7e12}),  # SXM5 (device_kind 'NVIDIA H100 80GB HBM3').
    ('H200', {'bfloat16': 989.4e12, 'float32': 494.7e12}),
    ('A100', {'bfloat16': 312e12, 'float32': 156e12}),
    ('L4', {'bfloat16': 121e12, 'float32': 60e12}),
    ('TPU v4', {'bfloat16': 275e12}),
    ('TPU v5 lite', {'bfloat16': 197e12}),
    ('TPU v5e', {'bfloat16': 197e12}),
    ('TPU v5', {'bfloat16': 459e12}),  # v5p.
    ('TPU v6', {'bfloat16': 918e12}),  # v6e (Trillium).
)


def peak_flops(device_kind: str, dtype: str) -> Optional[float]:
  """The table's peak for one device of this kind, or None (CPUs, unknown kinds, unknown dtypes)."""
  for name, peaks in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def device_info() -> Dict:
  device = jax.devices()[0]
  return {'platform': device.platform, 'kind': device.device_kind, 'count': jax.device_count(),
          'processes': jax.process_count(), 'host': platform.processor() or platform.machine()}


def versions(packages: Sequence[str] = ('jax', 'jaxlib', 'flax', 'optax')) -> Dict[str, Optional[str]]:
  found = {'python': platform.python_version()}
  for package in packages:
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      found[package] = None
  return found


def timing_stats(seconds: Sequence[float]) -> Dict[str, float]:
  """Milliseconds: median and spread (10th / 90th percentile, min, max) of per-call times."""
  ms = np.asarray(seconds, np.float64) * 1e3
  return {'median': float(np.median(ms)), 'p10': float(np.percentile(ms, 10)),
          'p90': float(np.percentile(ms, 90)), 'min': float(ms.min()), 'max': float(ms.max()), 'n': len(ms)}


def cost_flops(analysis) -> float:
  """The 'flops' entry of a cost analysis (a dict, or a list of one dict per program on older JAX)."""
  if isinstance(analysis, (list, tuple)):
    return float(sum(entry.get('flops', 0.0) for entry in analysis))
  return float(analysis.get('flops', 0.0))


def mfu(flops_per_item: Optional[float], items_per_second: float, peak: Optional[float],
        devices: int) -> Optional[float]:
  """Achieved FLOP/s over the peak of all devices; None when the peak or the count is unknown."""
  if not peak or not flops_per_item:
    return None
  return flops_per_item * items_per_second / (peak * devices)


def memory(compiled) -> Dict[str, int]:
  """A compiled program's bytes per device from XLA's memory analysis: its parts and 'total' (arguments +
  outputs - aliased + temporaries + code), what must fit in the device's memory at once."""
  analysis = compiled.memory_analysis()
  parts = {'arguments': analysis.argument_size_in_bytes, 'outputs': analysis.output_size_in_bytes,
           'aliased': analysis.alias_size_in_bytes, 'temporaries': analysis.temp_size_in_bytes,
           'code': analysis.generated_code_size_in_bytes}
  return {**parts, 'total': parts['arguments'] + parts['outputs'] - parts['aliased'] + parts['temporaries']
          + parts['code']}

