"""The CPU speed work, behind one gate: forms that exist only because XLA:CPU is slow at something.

Every such path asks `enabled()` and, off the CPU, the plain program runs: `hoisted_jit.jit` is
`jax.jit`, `convs.for_attacks` and `chunks.for_gradients` return the logits function as written, and the
compiler options are the backend's defaults. Nothing here was measured on a GPU or TPU, so nothing here
runs there. The one step taken before JAX starts (an XLA:CPU flag, `xla_flags`) asks
`expected_before_start()`, which reads the environment instead of starting a backend.

  chunks       attack gradients of a light network in chunks of images on a lone CPU device
  convs        evaluation's convolutions in XLA:CPU's fast forms (padded thin inputs, patches, phases)
  patch_conv   an RGB stem's input gradient as one matrix product onto patches
  phase_conv   a stride-2 convolution's input gradient as one stride-1 convolution per pixel phase
  hoisted_jit  the attacks' jit with the weights as arguments and their transforms computed once
  xla_flags    XLA's own (Eigen) convolutions instead of YNNPACK's, set in XLA_FLAGS at import
  seed_compute()  a K-seed run's seeds unrolled, not vectorised (`config.seed_compute='auto'`)

The figures behind each are in docs/benchmarks.md (CPU table).
"""

import importlib.metadata
import importlib.util
import os

from rpat_jax.sharding import devices


def enabled() -> bool:
  """True where the CPU forms run: the programs are built for CPU devices (`devices.platform()`: JAX's
  default backend, or the target of `python -m rpat_jax.aot`). Asked when a program is built."""
  return devices.platform() == 'cpu'


def _accelerator_plugin_installed() -> bool:
  """Whether JAX will find a GPU or TPU runtime: a `jax_plugins` module or entry point, or libtpu."""
  return (importlib.util.find_spec('jax_plugins') is not None or importlib.util.find_spec('libtpu') is not None
          or bool(os.environ.get('TPU_LIBRARY_PATH'))
          or bool(importlib.metadata.entry_points(group='jax_plugins')))


def expected_before_start() -> bool:
  """Before JAX starts a backend (which would fix its flags): whether its default backend will be the CPU.

  JAX_PLATFORMS decides when set (its first entry is the default); otherwise the CPU is expected only when
  no accelerator runtime is installed. A wrong guess costs only speed: a CPU flag not set, or set where a
  GPU or TPU ignores it.
  """
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  return not _accelerator_plugin_installed()


def seed_compute() -> str:
  """How one program computes a K-seed run's seeds where `config.seed_compute='auto'`: unrolled on a CPU,
  where XLA:CPU runs the vectorised step's batched convolutions slower than K copies of the single step
  (docs/benchmarks.md, K seeds in one program); vectorised elsewhere."""
  return 'unroll' if enabled() else 'vmap'
