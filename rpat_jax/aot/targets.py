"""Compile targets: a TPU slice or a GPU host by name, its compile-only devices, and its chips' published
figures (memory, peak bf16 FLOP/s, memory bandwidth) that a row is measured against.

TPU names are `jax.experimental.topologies` names (`v5e:4x4` = 16 chips in 4 hosts); libtpu compiles for
them without a TPU. GPU names are `<kind>x<count>` (`h100x8` = one host of 8); the CUDA plugin compiles for
them from a `GpuTargetConfigProto` written here from the GPU's published figures (`gpu_target_config`).
"""

import dataclasses
import importlib.util
import os
import re
from typing import Optional, Sequence

import jax

GIB = 1 << 30


class TargetError(ValueError):
  """A target that cannot be compiled for here; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator's published figures."""
  kind: str
  memory_bytes: int  # HBM per chip (GPU: what the driver reports).
  peak_bf16_flops: float  # Dense bf16 matrix FLOP/s.
  hbm_bytes_per_s: float
  chips_per_host: int
  # GPU only: what the CUDA plugin's target config needs.
  compute_capability: Optional[tuple] = None
  cores: int = 0  # SMs.
  clock_ghz: float = 0.0
  l2_bytes: int = 0
  shared_memory_per_core: int = 0
  shared_memory_per_block_optin: int = 0


# Google Cloud's TPU pages and NVIDIA's data sheets (SXM parts, dense bf16 without sparsity).
TPU_CHIPS = {
    'v5e': Chip('TPU v5 lite', 16 * GIB, 197e12, 819e9, 4),
    'v5p': Chip('TPU v5', 95 * GIB, 459e12, 2765e9, 4),
    'v6e': Chip('TPU v6 lite', 32 * GIB, 918e12, 1640e9, 4),
}
GPU_CHIPS = {
    'a100': Chip('NVIDIA A100-SXM4-80GB', 81920 << 20, 312e12, 2039e9, 8, (8, 0), 108, 1.41, 40 << 20,
                 167936, 166912),
    'h100': Chip('NVIDIA H100 80GB HBM3', 81559 << 20, 989.4e12, 3352e9, 8, (9, 0), 132, 1.98, 50 << 20,
                 233472, 232448),
    'h200': Chip('NVIDIA H200', 143771 << 20, 989.4e12, 4800e9, 8, (9, 0), 132, 1.98, 60 << 20,
                 233472, 232448),
}
# JAX preallocates this fraction of a GPU's memory for XLA (XLA_PYTHON_CLIENT_MEM_FRACTION); a program
# must fit in it. A TPU program may use the whole HBM.
GPU_MEMORY_FRACTION = 0.75

EXAMPLES = 'v5e:2x2, v5e:4x4, v5p:2x2x1, v6e:2x2, h100x8, h200x8, a100x8'


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  platform: str  # 'tpu' or 'gpu'
  chip: Chip
  chips: int
  processes: int

  @property
  def usable_bytes(self) -> int:
    """What one program may hold on a device."""
    fraction = GPU_MEMORY_FRACTION if self.platform == 'gpu' else 1.0
    return int(self.chip.memory_bytes * fraction)

  def devices(self) -> Sequence[jax.Device]:
    """The target's compile-only devices (TargetError naming the package to install when it is missing)."""
    from jax.experimental import topologies
    if self.platform == 'tpu':
      if importlib.util.find_spec('libtpu') is None:
        raise TargetError(f'--target={self.name} needs the TPU compiler: pip install libtpu==0.0.42.1 '
                          f'(or pip install -r requirements-aot.txt)')
      os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')  # No metadata server: not on a TPU VM.
      os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # Compiling needs no TPU: no lock between processes.
      topology = topologies.get_topology_desc(topology_name=self.name, platform='tpu')
    else:
      if importlib.util.find_spec('jax_cuda12_plugin') is None:
        raise TargetError(f'--target={self.name} needs the CUDA compiler: pip install jax-cuda12-plugin==0.10.2 '
                          f'jax-cuda12-pjrt==0.10.2 (or pip install -r requirements-aot.txt)')
      topology = topologies.get_topology_desc(platform='cuda', topology=f'1x1x{self.chips}',
                                              target_config=gpu_target_config(self.chip))
    found = list(topology.devices)
    if len(found) != self.chips:
      raise TargetError(f'--target={self.name}: the compiler gave {len(found)} devices, expected {self.chips}')
    return found


def parse(name: str) -> Target:
  """The target called `name` (TargetError, one line, for an unknown one)."""
  tpu = re.fullmatch(r'(v\d+[a-z]?):(\d+(?:x\d+){1,2})', name)
  if tpu and tpu.group(1) in TPU_CHIPS:
    chip = TPU_CHIPS[tpu.group(1)]
    chips = 1
    for size in tpu.group(2).split('x'):
      chips *= int(size)
    return Target(name, 'tpu', chip, chips, max(1, chips // chip.chips_per_host))
  gpu = re.fullmatch(r'([a-z]\d+)x(\d+)', name)
  if gpu and gpu.group(1) in GPU_CHIPS and 1 <= int(gpu.group(2)) <= 8:
    return Target(name, 'gpu', GPU_CHIPS[gpu.group(1)], int(gpu.group(2)), 1)
  raise TargetError(f'--target={name!r} is not a known target; allowed: a TPU topology '
                    f'<{"|".join(TPU_CHIPS)}>:<AxB[xC]> or a GPU host <{"|".join(GPU_CHIPS)}>x<1..8>, '
                    f'e.g. {EXAMPLES}')


def gpu_target_config(chip: Chip) -> str:
  """The `GpuTargetConfigProto` (text form) that the CUDA plugin compiles for: the device description XLA
  reads when it picks kernels and tiles (compute capability, SMs, memory, caches), without a GPU."""
  major, minor = chip.compute_capability
  return f'''gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {chip.shared_memory_per_core}
  shared_memory_per_block_optin: {chip.shared_memory_per_block_optin}
  threads_per_core_limit: 2048
  core_count: {chip.cores}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_bytes_per_s)}
  l2_cache_size: {chip.l2_bytes}
  clock_rate_ghz: {chip.clock_ghz}
  device_memory_size: {chip.memory_bytes}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: {major} minor: {minor} }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 patch: 0 }}
device_description_str: "{chip.kind}"
'''
