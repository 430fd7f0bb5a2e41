"""A stride-2 2-D convolution whose input gradient is one stride-1 convolution per output pixel phase.

The input gradient of a stride-2 convolution is a transposed convolution. XLA computes it as a
convolution over the output gradient dilated with zeros (`lhs_dilation=2`), and XLA:CPU runs that form
slowly: ResNet-18's stride-2 layers ran faster in phases on this project's CPU (docs/benchmarks.md, CPU
table).
Every input pixel of one parity (row mod 2, column mod 2) takes the output gradient through the same
kernel taps, so each of the four parities is a plain stride-1 convolution of the output gradient with
those taps, and the four results interleave into the input gradient. The sums are the same terms; only
the order of float additions can change. The forward pass and the kernel gradient are XLA's own.

Reverse mode only (`jax.custom_vjp`): forward-mode differentiation (`jax.jvp`) of it is an error.
"""

import functools
from typing import Sequence, Tuple

import jax
from jax import lax
import jax.numpy as jnp

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def _taps(kernel_size: int, low_padding: int, phase: int):
  """(output offset a, kernel tap t) pairs feeding input pixels 2m + phase from output pixel m + a."""
  first = -((kernel_size - 1 - phase - low_padding) // 2)  # ceil((phase + low - kernel + 1) / 2)
  last = (phase + low_padding) // 2
  return [(a, phase + low_padding - 2 * a) for a in range(first, last + 1)]


def _window(grad, axis: int, offsets: Sequence[int], size: int):
  """grad's rows m + a for m in [0, size) and a from offsets[0] to offsets[-1], zeros outside it."""
  start, stop, length = offsets[0], size - 1 + offsets[-1], grad.shape[axis]
  pads = [(0, 0)] * grad.ndim
  pads[axis] = (max(0, -start), max(0, stop - (length - 1)))
  grad = jnp.pad(grad, pads)
  begin = start + max(0, -start)
  return lax.slice_in_dim(grad, begin, begin + stop - start + 1, axis=axis)


def _input_gradient(grad, kernel, padding, input_shape, precision):
  """The input gradient of the stride-2 convolution, one stride-1 convolution per pixel phase."""
  n, height, width, channels = input_shape
  rows, cols = -(-height // 2), -(-width // 2)  # Input pixels per phase (rounded up; cut below).
  flipped = jnp.swapaxes(kernel, 2, 3)  # (kh, kw, out, in): the output gradient's channels go in.
  phases = []
  for row_phase in (0, 1):
    row_taps = _taps(kernel.shape[0], padding[0][0], row_phase)
    line = []
    for col_phase in (0, 1):
      col_taps = _taps(kernel.shape[1], padding[1][0], col_phase)
      if not row_taps or not col_taps:
        line.append(jnp.zeros((n, rows, cols, channels), grad.dtype))
        continue
      taps = jnp.stack([jnp.stack([flipped[t, u] for _, u in col_taps]) for _, t in row_taps])
      window = _window(_window(grad, 1, [a for a, _ in row_taps], rows), 2, [a for a, _ in col_taps], cols)
      line.append(lax.conv_general_dilated(window, taps, (1, 1), 'VALID', dimension_numbers=_DIMENSIONS,
                                           precision=precision))
    phases.append(jnp.stack(line, 3))  # (n, rows, cols, col phase, channels)
  interleaved = jnp.stack(phases, 2).reshape(n, 2 * rows, 2 * cols, channels)
  return interleaved[:, :height, :width]


def _convolve(inputs, kernel, padding, precision):
  return lax.conv_general_dilated(inputs, kernel, (2, 2), padding, dimension_numbers=_DIMENSIONS,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_stride2(inputs, kernel, padding: Tuple[Tuple[int, int], Tuple[int, int]], precision=None):
  """lax.conv_general_dilated(inputs, kernel, (2, 2), padding) on NHWC inputs and an HWIO kernel, with
  explicit (low, high) padding per spatial axis."""
  return _convolve(inputs, kernel, padding, precision)


def _forward(inputs, kernel, padding, precision):
  return _convolve(inputs, kernel, padding, precision), (inputs, kernel)


def _backward(padding, precision, saved, grad):
  inputs, kernel = saved
  _, kernel_vjp = jax.vjp(lambda k: _convolve(inputs, k, padding, precision), kernel)
  return _input_gradient(grad, kernel, padding, inputs.shape, precision), kernel_vjp(grad)[0]


conv_stride2.defvjp(_forward, _backward)
