"""A small CNN for CPU smoke runs and tests: three conv-BN-ReLU stages and a linear head."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rpat_jax.models import layers


class SmallCNN(nn.Module):
  """conv3x3(w) -> conv3x3(2w, stride 2) -> conv3x3(4w, stride 2), each + BN + ReLU; pool; linear."""
  num_classes: int
  width: int = 32
  dtype: Any = jnp.float32
  bn_fast_variance: bool = True  # BatchNorm's one-pass batch variance (layers.batch_norm).

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.astype(self.dtype)
    for i, (factor, stride) in enumerate(((1, 1), (2, 2), (4, 2))):
      x = layers.conv(self.width * factor, 3, stride, self.dtype, name=f'conv{i}')(x)
      x = nn.relu(layers.batch_norm(train, self.dtype, fast_variance=self.bn_fast_variance, name=f'bn{i}')(x))
    return layers.Head(self.num_classes, self.dtype)(x)
