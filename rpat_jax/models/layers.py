"""Layers shared by the models: PyTorch-default initialisers and BatchNorm with PyTorch's settings."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's default conv / linear weight init, kaiming_uniform(a=sqrt(5)): U(+-sqrt(1/fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
# kaiming_normal(mode='fan_out', nonlinearity='relu'), used by the WideResNet of ReBAT / TRADES.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_default_bias(fan_in: int):
  """PyTorch's default Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / fan_in ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


BN_MOMENTUM = 0.9  # Flax's weight on the old running statistics: PyTorch's momentum 0.1.


def batch_norm(train: bool, dtype: Any, name: str = None, fast_variance: bool = True) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5), fp32 parameters.

  fast_variance: the batch variance in one pass, E[x^2] - E[x]^2 (Flax's default, ours: a 10% faster train
  step on a CPU, and the same float32 gradient error on [B]'s ResNet-18, docs/benchmarks.md); False: two
  passes, mean((x - mean)^2), as PyTorch, which stays exact when a channel's mean is large against its
  spread (where one pass cancels). `model.bn_fast_variance` in the config.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, use_fast_variance=fast_variance, name=name)


def conv(features: int, kernel: int, stride: int, dtype: Any, init=torch_default_kernel, name: str = None):
  """A bias-free convolution with PyTorch padding (k // 2 on each side)."""
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=kernel // 2, use_bias=False,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=init, name=name)


class Head(nn.Module):
  """Global average pooling, then the linear classifier `head`; returns float32 logits."""
  num_classes: int
  dtype: Any = jnp.float32
  zero_bias: bool = False

  @nn.compact
  def __call__(self, x):
    x = jnp.mean(x, axis=(1, 2))
    bias_init = nn.initializers.zeros if self.zero_bias else torch_default_bias(x.shape[-1])
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=torch_default_kernel, bias_init=bias_init, name='head')(x)
    return x.astype(jnp.float32)

