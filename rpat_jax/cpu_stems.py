"""On a CPU, a Flax convolution over an input of few channels (an RGB image) runs on inputs and kernel
zero-padded to MIN_CHANNELS channels, for the attacks' forward passes and input gradients.

XLA:CPU's convolution kernel for 3-channel inputs is slow: on this project's 2-core CPU the quick-start
CNN's first layer alone took 4.0 ms at batch 64 against PyTorch's 0.6 ms, and the same layer on inputs
padded to 8 channels (zeros, with zero kernel rows) made the whole network's forward pass 19% faster and
its forward pass with the input gradient 16% faster (`docs/square_forward_cpu.py`, docs/benchmarks.md).
The padded channels add exact zeros to every sum, so only the order of float additions may change.

Only evaluation uses it: for training's weight gradient the same padding was slower on some shapes.
It applies to `flax.linen.Conv` layers with a shared kernel, one feature group, no dilation and a
non-circular padding, on inputs of fewer than MIN_CHANNELS channels; everything else runs as written.
"""

from typing import Callable

import flax.linen as nn
from flax.linen import linear
import jax
import jax.numpy as jnp

MIN_CHANNELS = 8


def _ones(value) -> bool:
  """Whether a dilation field means 1 on every axis (None, an int or a sequence)."""
  return value is None or (value == 1 if isinstance(value, int) else all(v == 1 for v in value))


def _pad_thin_inputs(next_fun, args, kwargs, context):
  """Method interceptor: a thin-input 2-D nn.Conv call computed on zero-padded channels."""
  module = context.module
  if (context.method_name != '__call__' or type(module) is not nn.Conv or kwargs or len(args) != 1
      or getattr(args[0], 'ndim', 0) != 4 or args[0].shape[-1] >= MIN_CHANNELS
      or not module.has_variable('params', 'kernel')):
    return next_fun(*args, **kwargs)
  padding = linear.canonicalize_padding(module.padding, 2)
  kernel = module.get_variable('params', 'kernel')
  if (not module.shared_weights or module.feature_group_count != 1 or module.mask is not None
      or not _ones(module.input_dilation) or not _ones(module.kernel_dilation)
      or module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None
      or padding in ('CIRCULAR', 'REFLECT', 'CAUSAL') or kernel.shape[2] != args[0].shape[-1]):
    return next_fun(*args, **kwargs)  # Anything but a plain convolution runs as written.
  bias = module.get_variable('params', 'bias') if module.use_bias else None
  inputs, kernel, bias = module.promote_dtype(args[0], kernel, bias, dtype=module.dtype)
  extra = MIN_CHANNELS - inputs.shape[-1]
  strides = (module.strides,) * 2 if isinstance(module.strides, int) else tuple(module.strides or (1, 1))
  y = jax.lax.conv_general_dilated(
      jnp.pad(inputs, ((0, 0), (0, 0), (0, 0), (0, extra))), jnp.pad(kernel, ((0, 0), (0, 0), (0, extra), (0, 0))),
      strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=module.precision)
  return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def for_attacks(logits_fn: Callable) -> Callable:
  """logits_fn with its thin-input Flax convolutions on padded channels, on a CPU; else logits_fn."""
  if jax.default_backend() != 'cpu':
    return logits_fn

  def logits(x):
    with nn.intercept_methods(_pad_thin_inputs):
      return logits_fn(x)
  return logits
