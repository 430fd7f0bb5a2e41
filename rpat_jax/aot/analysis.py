"""What a compiled program says about itself: bytes per device, the collectives and their sizes, the
matrix ops' dtypes, host transfers, the compiler's FLOPs and bytes, and a roofline estimate of its time.

Every time here is the compiler's estimate, never a measurement: `roofline_seconds` is
max(FLOPs / peak FLOP/s, bytes accessed / HBM bandwidth) per device from the compiled program's own counts
(XLA counts a loop body once, so a loop's trip count is not in it; the train step's attack is unrolled
by default, `attack.unroll`), and `optimal_seconds` is the TPU compiler's own figure, reported only when
it is positive (it came back negative for programs with loops).
"""

import collections
import re
import time
from typing import Any, Dict, Optional

import jax

from rpat_jax.bench import report as bench_report

DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2,
               's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
COLLECTIVES = ('all-reduce', 'reduce-scatter', 'all-gather', 'all-to-all', 'collective-permute',
               'collective-broadcast', 'ragged-all-to-all')
_ARRAY = re.compile(r'\b(' + '|'.join(DTYPE_BYTES) + r')\[([\d,]*)\]')
_OP = re.compile(r'=\s*(.+?)\s+(' + '|'.join(COLLECTIVES) + r')(-start)?\(')
_MATRIX = re.compile(r'=\s*\(?(\w+)\[[^=]*?\s(convolution|dot)\(')
_LIBRARY = re.compile(r'=\s*\(?(\w+)\[[^=]*?custom-call\(.*custom_call_target="(__cudnn\$conv\w*|__cublas\w*)"')
_HOST = re.compile(r'\s(send|recv|infeed|outfeed)\(|custom_call_target="[^"]*(?:[Hh]ost)[^"]*"')


def array_bytes(shape_text: str) -> int:
  """Bytes of every array named in an HLO shape, e.g. '(f32[64,10]{1,0}, bf16[3])'."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape_text):
    count = 1
    for dim in filter(None, dims.split(',')):
      count *= int(dim)
    total += count * DTYPE_BYTES[dtype]
  return total


def collectives(hlo_text: str) -> Dict[str, Dict[str, int]]:
  """{op: {'count', 'bytes', 'largest'}} of the collectives in an HLO module's text (a loop body's once).

  An async op counts at its start; for all-gather-start and the like, whose result is (operand, result),
  the larger array is the one moved."""
  found = collections.defaultdict(lambda: {'count': 0, 'bytes': 0, 'largest': 0})
  for shape, op, start in _OP.findall(hlo_text):
    sizes = [array_bytes(match.group(0)) for match in _ARRAY.finditer(shape)]
    moved = max(sizes) if start and op != 'all-reduce' else sum(sizes)
    entry = found[op]
    entry['count'] += 1
    entry['bytes'] += moved
    entry['largest'] = max(entry['largest'], moved)
  return dict(found)


def matrix_dtypes(hlo_text: str) -> Dict[str, int]:
  """How many convolutions and matrix products (XLA's own or cuDNN/cuBLAS calls) produce each dtype."""
  counts = collections.Counter(dtype for dtype, _ in _MATRIX.findall(hlo_text))
  counts.update(dtype for dtype, _ in _LIBRARY.findall(hlo_text))
  return dict(counts)


def host_transfers(hlo_text: str) -> int:
  return len(_HOST.findall(hlo_text))


def _cost(analysis) -> Optional[Dict[str, float]]:
  if analysis is None:
    return None
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per program.
    analysis = analysis[0] if analysis else None
  return dict(analysis) if analysis else None


_SIZE = r'([\d.]+)([KMGT]?)i?B?'
_UNITS = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}


def refused_for_memory(message: str) -> Optional[tuple]:
  """(bytes needed, bytes available or None) from a compiler's out-of-memory refusal, else None. The TPU
  compiler refuses a program that does not fit its HBM: 'Ran out of memory on HBM, the total memory
  required for HLO temporaries (72.98G) exceeds available HBM (15.75G)' (the temporaries alone)."""
  if 'RESOURCE_EXHAUSTED' not in message and 'out of memory' not in message.lower():
    return None
  sizes = [float(value) * _UNITS[unit] for value, unit in re.findall(r'\(' + _SIZE + r'\)', message)]
  if not sizes:
    return None
  return int(sizes[0]), int(sizes[1]) if len(sizes) > 1 else None


def unoptimised_cost(lowered: jax.stages.Lowered) -> Optional[Dict[str, float]]:
  """XLA's cost analysis of the program before optimisation and partitioning (all devices together), run by
  the CPU client: the CUDA plugin gives none for its compile-only devices. None where this JAX lacks it."""
  try:
    from jax._src.lib import _jax  # pylint: disable=import-outside-toplevel
    module = lowered.compiler_ir('hlo').get_hlo_module()
    return _cost(_jax.hlo_module_cost_analysis(jax.devices('cpu')[0].client, module))
  except (ImportError, AttributeError, RuntimeError):
    return None


def analyse(lowered: jax.stages.Lowered, *, images: int, devices: int, chip, usable_bytes: int) -> Dict[str, Any]:
  """Compiles `lowered` and returns its row: memory, collectives, dtypes, cost and the estimates.

  images: images per call over all `devices`; chip: the target's `targets.Chip`.
  """
  started = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as error:  # pylint: disable=broad-except
    refused = refused_for_memory(str(error))
    if refused is None:
      raise
    needed, available = refused
    return {'compile_seconds': round(time.perf_counter() - started, 1), 'bytes_per_device': needed,
            'device_bytes': min(usable_bytes, available or usable_bytes), 'fits': False,
            'images_per_device': images / devices, 'refused': str(error).strip().splitlines()[0][:300],
            'collectives': {}, 'matrix_dtypes': {}, 'host_transfers': 0, 'loops': 0}
  seconds = time.perf_counter() - started
  parts = bench_report.memory(compiled)
  total = parts.pop('total')
  text = compiled.as_text()
  row = {'compile_seconds': round(seconds, 1), 'bytes_per_device': total, 'bytes': parts,
         'device_bytes': usable_bytes, 'fits': total <= usable_bytes, 'images_per_device': images / devices,
         'collectives': collectives(text), 'matrix_dtypes': matrix_dtypes(text), 'host_transfers': host_transfers(text),
         'loops': text.count(' while(')}
  cost = _cost(compiled.cost_analysis())
  if cost and cost.get('flops'):
    flops, accessed = cost['flops'], cost.get('bytes accessed', 0.0)
    row['flops_per_image'] = flops * devices / images
    row['flops_source'] = 'compiled program, per device'
    compute, memory_time = flops / chip.peak_bf16_flops, accessed / chip.hbm_bytes_per_s
    estimate = max(compute, memory_time)
    row['estimate'] = {
        'kind': 'roofline: max(FLOPs / peak bf16 FLOP/s, bytes accessed / HBM bandwidth), the compiler\'s counts',
        'step_seconds': estimate, 'bound': 'compute' if compute >= memory_time else 'memory',
        'images_per_second_per_chip': images / devices / estimate,
        'images_per_second': images / estimate,
        'fraction_of_peak': flops / estimate / chip.peak_bf16_flops}
    if cost.get('optimal_seconds', -1.0) > 0:
      row['estimate']['compiler_optimal_seconds'] = cost['optimal_seconds']
  else:
    global_cost = _cost(lowered.cost_analysis()) or unoptimised_cost(lowered)
    if global_cost and global_cost.get('flops'):
      flops = global_cost['flops']
      row['flops_per_image'] = flops / images
      row['flops_source'] = 'lowered program before optimisation (the compiled one gave no cost analysis)'
      row['estimate'] = {
          'kind': 'lower bound: FLOPs at the peak bf16 FLOP/s (no byte count from this compiler)',
          'step_seconds': flops / devices / chip.peak_bf16_flops,
          'images_per_second_per_chip': images / devices / (flops / devices / chip.peak_bf16_flops)}
  return row
