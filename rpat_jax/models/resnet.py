"""ResNet-18 in two forms, for 32x32 inputs (stem conv3x3 + BN + ReLU, stride 1; kuangliu layout).

- `ResNet18` (`resnet18`): the standard BasicBlock network, 11,173,962 params for K=10.
- `ResNet18Bottleneck` (`resnet18_bottleneck`): what the official RPAT_Benchmarks code calls ResNet-18:
  Bottleneck blocks (1x1 -> 3x3 -> 1x1, expansion 4) [2, 2, 2, 2], 2048-d features, 13,958,986 params.
  `stem_stride=2` is its Tiny-ImageNet (64x64) setting.
- `PreActResNet18Benchmarks` (`preact_resnet18_benchmarks`): RPAT_Benchmarks' `pre_resnet18`, PreAct basic
  blocks under this ResNet stem (conv + BN + ReLU, stride 2 by default) and no final BN-ReLU; 11,171,274
  params. It is [B]'s Tiny-ImageNet PreActResNet-18 (the official code only runs it on 64x64 inputs).
"""

import functools
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from rpat_jax.models import layers
from rpat_jax.models.preact_resnet import PreActBlock


def _shortcut(x, features: int, stride: int, train: bool, dtype, fast_variance: bool):
  if stride == 1 and x.shape[-1] == features:
    return x
  x = layers.conv(features, 1, stride, dtype, name='shortcut_conv')(x)
  return layers.batch_norm(train, dtype, fast_variance=fast_variance, name='shortcut_bn')(x)


class BasicBlock(nn.Module):
  features: int
  stride: int
  dtype: Any
  bn_fast_variance: bool = True
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda: layers.batch_norm(train, self.dtype, fast_variance=self.bn_fast_variance)
    out = nn.relu(bn()(layers.conv(self.features, 3, self.stride, self.dtype)(x)))
    out = bn()(layers.conv(self.features, 3, 1, self.dtype)(out))
    return nn.relu(out + _shortcut(x, self.features, self.stride, train, self.dtype, self.bn_fast_variance))


class Bottleneck(nn.Module):
  features: int  # Inner width; the block outputs 4x this.
  stride: int
  dtype: Any
  bn_fast_variance: bool = True
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda: layers.batch_norm(train, self.dtype, fast_variance=self.bn_fast_variance)
    out = nn.relu(bn()(layers.conv(self.features, 1, 1, self.dtype)(x)))
    out = nn.relu(bn()(layers.conv(self.features, 3, self.stride, self.dtype)(out)))
    out = bn()(layers.conv(4 * self.features, 1, 1, self.dtype)(out))
    return nn.relu(out + _shortcut(x, 4 * self.features, self.stride, train, self.dtype, self.bn_fast_variance))


class ResNet(nn.Module):
  num_classes: int
  block: Any = BasicBlock
  blocks: Sequence[int] = (2, 2, 2, 2)
  stem_stride: int = 1
  dtype: Any = jnp.float32
  bn_fast_variance: bool = True  # BatchNorm's one-pass batch variance (layers.batch_norm).

  @property
  def stage_sizes(self) -> Tuple[int, ...]:
    return tuple(self.blocks)

  @nn.compact
  def __call__(self, x, train: bool):
    x = layers.conv(64, 3, self.stem_stride, self.dtype, name='stem')(x.astype(self.dtype))
    x = nn.relu(layers.batch_norm(train, self.dtype, fast_variance=self.bn_fast_variance, name='stem_bn')(x))
    for stage, count in enumerate(self.blocks):
      for i in range(count):
        block = self.block(64 * 2 ** stage, 2 if stage > 0 and i == 0 else 1, self.dtype, self.bn_fast_variance)
        x = block(x, train)
    return layers.Head(self.num_classes, self.dtype)(x)


ResNet18 = functools.partial(ResNet, block=BasicBlock, blocks=(2, 2, 2, 2))
ResNet18Bottleneck = functools.partial(ResNet, block=Bottleneck, blocks=(2, 2, 2, 2))
PreActResNet18Benchmarks = functools.partial(ResNet, block=PreActBlock, blocks=(2, 2, 2, 2), stem_stride=2)
