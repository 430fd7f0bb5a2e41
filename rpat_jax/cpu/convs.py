"""On a CPU, the attacks' Flax convolutions in the forms XLA:CPU runs fastest: an input of few channels
(an RGB image) zero-padded to MIN_CHANNELS channels, with its input gradient in patch form at stride 1
(`patch_conv`), and a stride-2 convolution's input gradient taken in pixel phases (`phase_conv`).

XLA:CPU's kernel for 3-channel inputs is slow, and so is its input gradient of a stride-2 convolution (a
convolution over a zero-dilated gradient); each form was faster on the quick-start CNN and ResNet-18 here
(docs/benchmarks.md, CPU table). Padded channels add exact zeros to every sum, and the phases and the
patch form sum the same terms, so only the order of float additions may change.

Only evaluation uses it: for training's weight gradient the padding was slower on some shapes. It applies
to `flax.linen.Conv` layers with a shared kernel, one feature group, no dilation and a non-circular
padding, on 4-D inputs; everything else runs as written, and off the CPU (`cpu.enabled()`) all of it does.
Reverse-mode differentiation only (the phases and the patch form are `jax.custom_vjp`s).
"""

from typing import Callable

import flax.linen as nn
from flax.linen import linear
from jax import lax

from rpat_jax import cpu
from rpat_jax.cpu import patch_conv
from rpat_jax.cpu import phase_conv

MIN_CHANNELS = 8


def _ones(value) -> bool:
  """Whether a dilation field means 1 on every axis (None, an int or a sequence)."""
  return value is None or (value == 1 if isinstance(value, int) else all(v == 1 for v in value))


def _plain_2d(module, inputs, kernel, padding) -> bool:
  """Whether module is a plain 2-D convolution: what the fast forms compute exactly."""
  return (inputs.ndim == 4 and kernel.ndim == 4 and kernel.shape[2] == inputs.shape[-1]
          and module.shared_weights and module.feature_group_count == 1 and module.mask is None
          and _ones(module.input_dilation) and _ones(module.kernel_dilation)
          and module.conv_general_dilated is None and module.conv_general_dilated_cls is None
          and padding not in ('CIRCULAR', 'REFLECT', 'CAUSAL'))


def _fast_forms(next_fun, args, kwargs, context):
  """Method interceptor: a plain 2-D nn.Conv call on padded channels and/or with phased input gradients."""
  module = context.module
  if (context.method_name != '__call__' or type(module) is not nn.Conv or kwargs or len(args) != 1
      or getattr(args[0], 'ndim', 0) != 4 or not module.has_variable('params', 'kernel')):
    return next_fun(*args, **kwargs)
  padding = linear.canonicalize_padding(module.padding, 2)
  kernel = module.get_variable('params', 'kernel')
  strides = (module.strides,) * 2 if isinstance(module.strides, int) else tuple(module.strides or (1, 1))
  thin, phased = args[0].shape[-1] < MIN_CHANNELS, strides == (2, 2)
  if not (thin or phased) or not _plain_2d(module, args[0], kernel, padding):
    return next_fun(*args, **kwargs)  # Anything else runs as written.
  bias = module.get_variable('params', 'bias') if module.use_bias else None
  inputs, kernel, bias = module.promote_dtype(args[0], kernel, bias, dtype=module.dtype)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(inputs.shape[1:3], kernel.shape[:2], strides, padding)
  padding = tuple((int(low), int(high)) for low, high in padding)
  if thin and strides == (1, 1) and min(min(pair) for pair in padding) >= 0:
    y = patch_conv.conv_thin(inputs, kernel, padding, MIN_CHANNELS, module.precision)
  else:
    if thin:
      inputs, kernel = patch_conv.pad_channels(inputs, kernel, MIN_CHANNELS)
    if phased:
      y = phase_conv.conv_stride2(inputs, kernel, padding, module.precision)
    else:
      y = lax.conv_general_dilated(inputs, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                   precision=module.precision)
  return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def for_attacks(logits_fn: Callable) -> Callable:
  """logits_fn with its plain Flax convolutions in XLA:CPU's fast forms, on a CPU; else logits_fn."""
  if not cpu.enabled():
    return logits_fn

  def logits(x):
    with nn.intercept_methods(_fast_forms):
      return logits_fn(x)
  return logits
