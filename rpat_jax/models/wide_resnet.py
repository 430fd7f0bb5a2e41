"""WideResNet-depth-k (default 34-10: 46,160,474 params for K=10; 28-10: 36,479,194), no dropout.

The RobustBench / TRADES / ReBAT definition: stem conv3x3(16), three groups of (depth-4)/6 pre-activation
basic blocks of widths 16k, 32k, 64k (strides 1, 2, 2), final BN-ReLU, global average pool, linear;
kaiming-normal (fan_out) convs and a zero linear bias. Classes come from the data.
"""

import functools
from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from rpat_jax.models import layers


class WideBlock(nn.Module):
  """When in != out, BN-ReLU of the input feeds both the conv path and the 1x1 shortcut."""
  features: int
  stride: int
  dtype: Any
  bn_fast_variance: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(layers.conv, dtype=self.dtype, init=layers.kaiming_normal_fan_out)
    activated = nn.relu(layers.batch_norm(train, self.dtype, fast_variance=self.bn_fast_variance)(x))
    equal = x.shape[-1] == self.features
    out = conv(self.features, 3, self.stride)(activated)
    out = nn.relu(layers.batch_norm(train, self.dtype, fast_variance=self.bn_fast_variance)(out))
    out = conv(self.features, 3, 1)(out)
    shortcut = x if equal else conv(self.features, 1, self.stride, name='shortcut')(activated)
    return out + shortcut


class WideResNet(nn.Module):
  num_classes: int
  depth: int = 34
  widen_factor: int = 10
  stem_stride: int = 1  # 2 for 64x64 Tiny-ImageNet, as RPAT_Benchmarks' WRN.
  dtype: Any = jnp.float32
  bn_fast_variance: bool = True  # BatchNorm's one-pass batch variance (layers.batch_norm).

  @property
  def stage_sizes(self) -> Tuple[int, ...]:
    return ((self.depth - 4) // 6,) * 3

  @nn.compact
  def __call__(self, x, train: bool):
    if (self.depth - 4) % 6:
      raise ValueError(f'model.depth={self.depth}: WideResNet needs depth = 6n + 4 (e.g. 28, 34)')
    per_group = (self.depth - 4) // 6
    x = layers.conv(16, 3, self.stem_stride, self.dtype, init=layers.kaiming_normal_fan_out,
                    name='stem')(x.astype(self.dtype))
    for group, stride in enumerate((1, 2, 2)):
      for i in range(per_group):
        x = WideBlock(16 * 2 ** group * self.widen_factor, stride if i == 0 else 1, self.dtype,
                      self.bn_fast_variance)(x, train)
    x = nn.relu(layers.batch_norm(train, self.dtype, fast_variance=self.bn_fast_variance, name='final_bn')(x))
    return layers.Head(self.num_classes, self.dtype, zero_bias=True)(x)
