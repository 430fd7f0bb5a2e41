"""The model zoo: Flax Linen modules, NHWC inputs in [0, 1], float32 params, float32 logits.

`MODELS` is the one registry: each name, its constructor and the keys of `config.model` the constructor
takes (besides num_classes and dtype). `create_model(name, num_classes, dtype, **fields)` builds one;
`from_config(model_config, num_classes)` builds the configured one. Every model takes `__call__(x, train)`,
where `train=True` uses batch statistics in BatchNorm (call with `mutable=['batch_stats']`) and
`train=False` the running ones. The classifier is the Dense layer named `head`. Models built from
residual stages have `stage_sizes`, the number of blocks in each stage (the PyTorch converter maps
blocks to stages with it).
"""

import dataclasses
from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax.numpy as jnp

from rpat_jax.models.preact_resnet import PreActResNet18
from rpat_jax.models.resnet import PreActResNet18Benchmarks, ResNet18, ResNet18Bottleneck
from rpat_jax.models.small_cnn import SmallCNN
from rpat_jax.models.wide_resnet import WideResNet

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  constructor: Callable[..., nn.Module]
  fields: Tuple[str, ...] = ()  # Keys of config.model passed to the constructor.
  description: str = ''


_BN = ('bn_fast_variance',)  # Every model's BatchNorm variance form.
MODELS: Dict[str, ModelSpec] = {
    'small_cnn': ModelSpec(SmallCNN, ('width',) + _BN, 'three conv-BN-ReLU stages, for CPU checks'),
    'preact_resnet18': ModelSpec(PreActResNet18, _BN, "PreActResNet-18, the standard CIFAR form ([S])"),
    'preact_resnet18_benchmarks': ModelSpec(PreActResNet18Benchmarks, _BN,
                                            "[B]'s 64x64 pre_resnet18: BN stem of stride 2, no final BN"),
    'resnet18': ModelSpec(ResNet18, _BN, 'the standard BasicBlock ResNet-18 (stem stride 1)'),
    'resnet18_bottleneck': ModelSpec(ResNet18Bottleneck, ('stem_stride',) + _BN,
                                     "[B]'s ResNet-18: Bottleneck blocks [2, 2, 2, 2], 2048-d features"),
    'wide_resnet': ModelSpec(WideResNet, ('depth', 'widen_factor', 'stem_stride') + _BN, 'WideResNet-depth-k'),
}
MODEL_NAMES = tuple(MODELS)


def create_model(name: str, num_classes: int, dtype: Any = jnp.float32, **fields) -> nn.Module:
  if name not in MODELS:
    raise ValueError(f'model {name!r} is unknown; allowed: {", ".join(MODELS)}')
  return MODELS[name].constructor(num_classes=num_classes, dtype=dtype, **fields)


def config_fields(model_config) -> Dict[str, Any]:
  """The constructor fields of the configured model, read from `config.model` (its registered keys)."""
  return {key: model_config[key] for key in MODELS[model_config.name].fields}


def from_config(model_config, num_classes: int) -> nn.Module:
  """The model `config.model` names, with its fields and compute dtype."""
  return create_model(model_config.name, num_classes, dtype=DTYPES[model_config.dtype],
                      **config_fields(model_config))
