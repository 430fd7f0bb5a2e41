"""A stride-1 2-D convolution of an input with few channels (an RGB image) whose input gradient is one
matrix product onto the input's patches, summed back into place.

XLA takes that input gradient as a convolution with as few output channels as the image has, a form
XLA:CPU runs slowly. With kh * kw * C columns (27 for a 3x3 kernel on RGB), the output gradient times the
flattened kernel gives every patch's gradient in one product; each kernel tap's slice of it, shifted to
its offset, adds into the input gradient: the quick-start CNN's APGD input gradient ran faster so on this
project's CPU (docs/benchmarks.md, CPU table). The sums are the same terms; only the order of float
additions can change. The forward pass runs on the input zero-padded to `channels` channels (exact zeros,
faster on XLA:CPU), the kernel gradient is XLA's own.

Reverse mode only (`jax.custom_vjp`): forward-mode differentiation (`jax.jvp`) of it is an error.
"""

import functools
from typing import Tuple

import jax
from jax import lax
import jax.numpy as jnp

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def pad_channels(inputs, kernel, channels: int):
  """NHWC inputs and an HWIO kernel zero-padded to at least `channels` input channels (exact zeros)."""
  extra = max(0, channels - inputs.shape[-1])
  return (jnp.pad(inputs, ((0, 0), (0, 0), (0, 0), (0, extra))),
          jnp.pad(kernel, ((0, 0), (0, 0), (0, extra), (0, 0))))


def _convolve(inputs, kernel, padding, channels, precision):
  """The stride-1 convolution, on inputs and kernel zero-padded to `channels` input channels."""
  inputs, kernel = pad_channels(inputs, kernel, channels)
  return lax.conv_general_dilated(inputs, kernel, (1, 1), padding, dimension_numbers=_DIMENSIONS,
                                  precision=precision)


def _input_gradient(grad, kernel, padding, input_shape, precision):
  """The input gradient: the output gradient times the flattened kernel, each tap's slice added at its
  offset into the padded input's gradient, which is then cut to the input."""
  kh, kw, channels, out = kernel.shape
  patches = jnp.einsum('bhwo,ko->bhwk', grad, kernel.reshape(kh * kw * channels, out), precision=precision)
  n, height, width, _ = input_shape
  padded_height, padded_width = height + sum(padding[0]), width + sum(padding[1])
  rows, cols = grad.shape[1], grad.shape[2]
  total = jnp.zeros((n, padded_height, padded_width, channels), grad.dtype)
  for i in range(kh):
    for j in range(kw):
      tap = patches[..., (i * kw + j) * channels:(i * kw + j + 1) * channels]
      total = total + jnp.pad(tap, ((0, 0), (i, padded_height - rows - i), (j, padded_width - cols - j), (0, 0)))
  return total[:, padding[0][0]:padding[0][0] + height, padding[1][0]:padding[1][0] + width]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_thin(inputs, kernel, padding: Tuple[Tuple[int, int], Tuple[int, int]], channels: int = 8,
              precision=None):
  """lax.conv_general_dilated(inputs, kernel, (1, 1), padding) on NHWC inputs and an HWIO kernel, with
  explicit non-negative (low, high) padding per spatial axis; the forward pass on `channels` channels."""
  return _convolve(inputs, kernel, padding, channels, precision)


def _forward(inputs, kernel, padding, channels, precision):
  return _convolve(inputs, kernel, padding, channels, precision), (inputs, kernel)


def _backward(padding, channels, precision, saved, grad):
  inputs, kernel = saved
  _, kernel_vjp = jax.vjp(lambda k: _convolve(inputs, k, padding, channels, precision), kernel)
  return _input_gradient(grad, kernel, padding, inputs.shape, precision), kernel_vjp(grad)[0]


conv_thin.defvjp(_forward, _backward)
