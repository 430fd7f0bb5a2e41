"""The model zoo: Flax Linen modules, NHWC inputs in [0, 1], float32 params, float32 logits.

`create_model(name, num_classes, dtype, **fields)`; every model takes `__call__(x, train)`, where
`train=True` uses batch statistics in BatchNorm (call with `mutable=['batch_stats']`) and `train=False`
the running ones. The classifier is the Dense layer named `head`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rpat_jax.models.preact_resnet import PreActResNet18
from rpat_jax.models.resnet import PreActResNet18Benchmarks, ResNet18, ResNet18Bottleneck
from rpat_jax.models.small_cnn import SmallCNN
from rpat_jax.models.wide_resnet import WideResNet

_MODELS = {
    'small_cnn': SmallCNN,  # fields: width
    'preact_resnet18': PreActResNet18,
    'preact_resnet18_benchmarks': PreActResNet18Benchmarks,  # [B]'s 64x64 variant; fields: stem_stride (2)
    'resnet18': ResNet18,  # standard BasicBlock form
    'resnet18_bottleneck': ResNet18Bottleneck,  # the official code's "ResNet-18"; fields: stem_stride
    'wide_resnet': WideResNet,  # fields: depth, widen_factor, stem_stride
}
MODEL_NAMES = tuple(_MODELS)


def create_model(name: str, num_classes: int, dtype: Any = jnp.float32, **fields) -> nn.Module:
  if name not in _MODELS:
    raise ValueError(f'model {name!r} is unknown; allowed: {", ".join(MODEL_NAMES)}')
  return _MODELS[name](num_classes=num_classes, dtype=dtype, **fields)
