"""On a lone CPU device, a light network's gradients over a batch run as consecutive chunks of images.

XLA:CPU's convolutions slow down once a layer's activations outgrow the core's L2 cache, most for
networks that do little work per byte they touch: the quick-start CNN's APGD-CE iteration ran markedly
faster in chunks of 32 images than as one batch of 256 within the same program (docs/benchmarks.md, CPU
table). The chunks compute what the whole batch does (eval-mode BatchNorm: nothing is shared between
images), in one program; only float rounding differs. ResNets and WideResNets (MAX_FLOPS_PER_BYTE),
meshes of several devices, and every backend but the CPU (`cpu.enabled()`) keep whole batches.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rpat_jax import cpu

# The largest activation of a chunk stays within this: half the L2 cache of one core here (the quick-start
# CNN's chunks of 32 images, the fastest of 16, 32 and 64).
CACHE_BYTES = 2 * 2 ** 20


# Chunks pay where a network does little work on the data it touches: the quick-start CNN (about 90 FLOPs
# per byte of its largest activation) ran faster in chunks; ResNet-18 (about 4,200) ran no faster in
# chunks and compiled slower (docs/benchmarks.md), so networks above this keep whole batches.
MAX_FLOPS_PER_BYTE = 500


# On XLA:CPU a PGD step over 256 points of the small CNN cost markedly more per point than over 128 or
# fewer (docs/benchmarks.md): PGD evaluation's calls there take at most this many points per device.
POINTS_PER_DEVICE = 128

# The batch the forward pass is traced with: a size no kernel dimension has, so that only arrays with a
# row per image count (not, say, a 1x1 kernel cast to the compute dtype).
_TRACE_BATCH = 13


def walk_equations(jaxpr, visit) -> None:
  """Calls visit(eqn) on every equation of jaxpr and of the programs nested in it."""
  for eqn in jaxpr.eqns:
    visit(eqn)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          walk_equations(inner, visit)


def _forward_jaxpr(logits_fn: Callable, image_shape: Sequence[int]):
  """The forward pass's jaxpr, traced with _TRACE_BATCH images."""
  return jax.make_jaxpr(logits_fn)(jnp.zeros((_TRACE_BATCH, *image_shape), jnp.float32)).jaxpr


def _largest_activation_bytes(jaxpr) -> int:
  largest = [0]

  def visit(eqn):
    for var in eqn.outvars:
      shape = getattr(var.aval, 'shape', ())
      if len(shape) >= 1 and shape[0] == _TRACE_BATCH and hasattr(var.aval, 'dtype'):
        largest[0] = max(largest[0], int(np.prod(shape[1:])) * np.dtype(var.aval.dtype).itemsize)
  walk_equations(jaxpr, visit)
  return largest[0]


def _flops_per_image(jaxpr) -> float:
  total = [0.0]

  def visit(eqn):
    out = eqn.outvars[0].aval
    if eqn.primitive.name == 'conv_general_dilated':
      kernel = eqn.invars[1].aval.shape
      outputs_per_kernel = kernel[eqn.params['dimension_numbers'].rhs_spec[0]]
      total[0] += 2.0 * np.prod(out.shape) * np.prod(kernel) / outputs_per_kernel
    elif eqn.primitive.name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total[0] += 2.0 * np.prod(out.shape) * np.prod([lhs[d] for d in contracting])
  walk_equations(jaxpr, visit)
  return total[0] / _TRACE_BATCH


def largest_activation_bytes(logits_fn: Callable, image_shape: Sequence[int]) -> int:
  """Bytes per image of the largest per-image array the forward pass makes (nested programs included)."""
  return _largest_activation_bytes(_forward_jaxpr(logits_fn, image_shape))


def flops_per_image(logits_fn: Callable, image_shape: Sequence[int]) -> float:
  """Multiply-adds x 2 per image of the forward pass's convolutions and matrix products."""
  return _flops_per_image(_forward_jaxpr(logits_fn, image_shape))


def chunk_size(logits_fn: Callable, image_shape: Sequence[int], devices: int) -> Optional[int]:
  """Images per chunk for gradients on a lone CPU device (a power of two whose largest activation fits
  CACHE_BYTES, at least 1); None on other devices, on a mesh of several, or for a network whose
  convolutions do more than MAX_FLOPS_PER_BYTE per byte of its largest activation."""
  if not cpu.enabled() or devices != 1:
    return None
  jaxpr = _forward_jaxpr(logits_fn, image_shape)  # Traced once for both measures.
  per_image = max(1, _largest_activation_bytes(jaxpr))
  if _flops_per_image(jaxpr) > MAX_FLOPS_PER_BYTE * per_image:
    return None
  return 1 << max(0, int(np.floor(np.log2(max(1, CACHE_BYTES // per_image)))))


def points_per_call(batch_size: int, devices: int) -> int:
  """batch_size, capped at POINTS_PER_DEVICE per device on a CPU (results do not depend on it)."""
  return min(batch_size, POINTS_PER_DEVICE * devices) if cpu.enabled() else batch_size


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
