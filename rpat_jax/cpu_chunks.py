"""On a lone CPU device, a network's gradients over a batch run as consecutive chunks of images.

XLA:CPU's convolutions slow down once a layer's activations outgrow the core's L2 cache. On this
project's 2-core CPU (4 MiB of L2 per core), one APGD-CE iteration of the quick-start CNN over 256 points
took 107 ms as one batch and 57 ms as chunks of 32 images within the same program (69 ms as chunks of
64), and a ResNet-18 input gradient over 64 images 0.90 s against 0.76 s as chunks of 8 (0.74 s as
chunks of 16; `docs/cpu_chunks_cpu.py`, docs/benchmarks.md). The chunks compute what the whole batch
does (eval-mode BatchNorm: nothing is shared between images), in one program; only float rounding
differs. Accelerators and meshes of several devices keep whole batches.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The largest activation of a chunk stays within this: half the L2 cache of one core here (the quick-start
# CNN's chunks of 32 images, ResNet-18's of 8, both the fastest or within noise of it).
CACHE_BYTES = 2 * 2 ** 20


# The batch the forward pass is traced with: a size no kernel dimension has, so that only arrays with a
# row per image count (not, say, a 1x1 kernel cast to the compute dtype).
_TRACE_BATCH = 13


def largest_activation_bytes(logits_fn: Callable, image_shape: Sequence[int]) -> int:
  """Bytes per image of the largest per-image array the forward pass makes (nested programs included)."""
  def walk(jaxpr):
    largest = 0
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        aval = var.aval
        shape = getattr(aval, 'shape', ())
        if len(shape) >= 1 and shape[0] == _TRACE_BATCH and hasattr(aval, 'dtype'):
          largest = max(largest, int(np.prod(shape[1:])) * np.dtype(aval.dtype).itemsize)
      for param in eqn.params.values():
        for sub in param if isinstance(param, (list, tuple)) else (param,):
          inner = getattr(sub, 'jaxpr', sub)
          if hasattr(inner, 'eqns'):
            largest = max(largest, walk(inner))
    return largest
  closed = jax.make_jaxpr(logits_fn)(jnp.zeros((_TRACE_BATCH, *image_shape), jnp.float32))
  return walk(closed.jaxpr)


def chunk_size(logits_fn: Callable, image_shape: Sequence[int], devices: int) -> Optional[int]:
  """Images per chunk for gradients on a lone CPU device (a power of two whose largest activation fits
  CACHE_BYTES, at least 1); None on other devices or on a mesh of several."""
  if jax.default_backend() != 'cpu' or devices != 1:
    return None
  per_image = max(1, largest_activation_bytes(logits_fn, image_shape))
  return 1 << max(0, int(np.floor(np.log2(max(1, CACHE_BYTES // per_image)))))


def chunked(logits_fn: Callable, chunk: Optional[int]) -> Callable:
  """logits_fn over consecutive chunks of at most `chunk` images, concatenated (None: logits_fn itself)."""
  if chunk is None:
    return logits_fn

  def logits(x):
    if x.shape[0] <= chunk:
      return logits_fn(x)
    return jnp.concatenate([logits_fn(x[start:start + chunk]) for start in range(0, x.shape[0], chunk)])
  return logits


def for_gradients(logits_fn: Callable, devices: int) -> Callable:
  """logits_fn, in chunks where chunk_size says so for the images it is traced with: the form the
  attacks take gradients through. The chunk is worked out once per image shape, not at every compile
  (each bucket size compiles its own step)."""
  chunks = {}

  def logits(x):
    shape = tuple(x.shape[1:])
    if shape not in chunks:
      chunks[shape] = chunk_size(logits_fn, shape, devices)
    return chunked(logits_fn, chunks[shape])(x)
  return logits
