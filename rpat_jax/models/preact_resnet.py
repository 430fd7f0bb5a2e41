"""PreActResNet-18 for CIFAR: the standard form used by ReBAT / RPAT_SOTAs (11,172,170 params, K=10).

Stem conv3x3 (no BN), PreAct basic blocks [2, 2, 2, 2] of widths 64-512, final BN-ReLU, global average
pooling, linear. (RPAT_Benchmarks' `pre_resnet18`, a 64x64 variant with a BN stem and no final BN, is
`preact_resnet18_benchmarks` in models/resnet.py.)
"""

import functools
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from rpat_jax.models import layers


class PreActBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3; the 1x1 shortcut (when shapes change) reads the activated input."""
  features: int
  stride: int
  dtype: Any
  bn_fast_variance: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    out = nn.relu(layers.batch_norm(train, self.dtype, fast_variance=self.bn_fast_variance)(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = layers.conv(self.features, 1, self.stride, self.dtype, name='shortcut')(out)
    else:
      shortcut = x
    out = layers.conv(self.features, 3, self.stride, self.dtype)(out)
    out = nn.relu(layers.batch_norm(train, self.dtype, fast_variance=self.bn_fast_variance)(out))
    out = layers.conv(self.features, 3, 1, self.dtype)(out)
    return out + shortcut


class PreActResNet(nn.Module):
  num_classes: int
  blocks: Sequence[int] = (2, 2, 2, 2)
  dtype: Any = jnp.float32
  bn_fast_variance: bool = True  # BatchNorm's one-pass batch variance (layers.batch_norm).

  @property
  def stage_sizes(self) -> Tuple[int, ...]:
    return tuple(self.blocks)

  @nn.compact
  def __call__(self, x, train: bool):
    x = layers.conv(64, 3, 1, self.dtype, name='stem')(x.astype(self.dtype))
    for stage, count in enumerate(self.blocks):
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        x = PreActBlock(64 * 2 ** stage, stride, self.dtype, self.bn_fast_variance)(x, train)
    x = nn.relu(layers.batch_norm(train, self.dtype, fast_variance=self.bn_fast_variance, name='final_bn')(x))
    return layers.Head(self.num_classes, self.dtype)(x)


PreActResNet18 = functools.partial(PreActResNet, blocks=(2, 2, 2, 2))
