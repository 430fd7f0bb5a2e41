"""Model zoo: parameter counts equal the PyTorch definitions; dtypes, shapes and BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpat_jax import models
from rpat_jax.config import defaults
from rpat_jax.models import layers


def _param_count(name, num_classes=10, size=32, **fields):
  model = models.create_model(name, num_classes, **fields)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes['params']))


@pytest.mark.parametrize('name,fields,expected', [
    ('preact_resnet18', {}, 11_172_170),  # ReBAT / RPAT_SOTAs PreActResNet18.
    ('preact_resnet18_benchmarks', {}, 11_171_274),  # RPAT_Benchmarks' pre_resnet18 (BN stem, no final BN).
    ('resnet18', {}, 11_173_962),  # Standard BasicBlock ResNet-18 (kuangliu).
    ('resnet18_bottleneck', {}, 13_958_986),  # RPAT_Benchmarks' "ResNet-18".
    ('wide_resnet', {}, 46_160_474),  # WRN-34-10.
    ('wide_resnet', {'depth': 28}, 36_479_194),  # WRN-28-10.
])
def test_parameter_counts_match_pytorch(name, fields, expected):
  assert _param_count(name, **fields) == expected
  # K=100 only widens the head: (100 - 10) * (features + 1) more parameters.
  features = {'wide_resnet': 640, 'resnet18_bottleneck': 2048}.get(name, 512)
  assert _param_count(name, num_classes=100, **fields) == expected + 90 * (features + 1)


@pytest.mark.parametrize('name,fields,expected', [('resnet18_bottleneck', {}, 13_958_986),
                                                  ('preact_resnet18_benchmarks', {}, 11_171_274),
                                                  ('wide_resnet', {'depth': 10, 'widen_factor': 1}, 77_850)])
def test_stem_stride_two_halves_64x64_inputs_with_the_same_parameters(name, fields, expected):
  assert _param_count(name, size=64, stem_stride=2, **fields) == _param_count(name, **fields) == expected
  model = models.create_model(name, 10, stem_stride=2, **fields)
  x = jnp.zeros((1, 64, 64, 3))
  stem = lambda: model.apply(model.init(jax.random.key(0), x, train=False), x, train=False, capture_intermediates=True,
                             mutable=['intermediates'])[1]['intermediates']['stem']['__call__'][0]
  assert jax.eval_shape(stem).shape[1:3] == (32, 32)  # Shapes only: no 14M-weight initialisation.


@pytest.mark.parametrize('name', ['preact_resnet18', 'preact_resnet18_benchmarks', 'resnet18', 'resnet18_bottleneck',
                                  'wide_resnet'])
def test_outputs_are_float32_logits_even_in_bfloat16(name):
  model = models.create_model(name, 10, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (2, 10) and out.dtype == jnp.float32


def test_small_cnn_forward_and_batchnorm_modes():
  model = models.create_model('small_cnn', 7, width=4)
  x = jax.random.uniform(jax.random.key(1), (6, 16, 16, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert logits.shape == (6, 7) and logits.dtype == jnp.float32
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables['batch_stats'], updates['batch_stats'])
  assert all(jax.tree.leaves(changed))  # Train mode moves the running statistics ...
  first = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(first, model.apply(variables, x, train=False))  # ... eval mode reads them.
  assert not np.allclose(first, logits)
  bf16 = models.create_model('small_cnn', 7, width=4, dtype=jnp.bfloat16)
  np.testing.assert_allclose(bf16.apply(variables, x, train=False), first, atol=0.1, rtol=0.1)


def test_unknown_name_lists_the_allowed_ones():
  with pytest.raises(ValueError, match='allowed: small_cnn, preact_resnet18'):
    models.create_model('vgg16', 10)


def test_two_pass_batchnorm_variance_stays_exact_where_one_pass_cancels():
  """A channel whose mean (1000) dwarfs its spread (0.1): E[x^2] - E[x]^2 loses the variance in float32
  rounding; mean((x - mean)^2), PyTorch's form and `model.bn_fast_variance=False`, keeps it."""
  x = 1000.0 + 0.1 * jax.random.normal(jax.random.key(0), (64, 4, 4, 2))
  spreads = {}
  for fast in (True, False):
    norm = layers.batch_norm(True, jnp.float32, fast_variance=fast)
    variables = norm.init(jax.random.key(1), x)
    normalised, _ = norm.apply(variables, x, mutable=['batch_stats'])
    spreads[fast] = float(jnp.std(normalised))
  assert abs(spreads[False] - 1.0) < 1e-2 and abs(spreads[True] - 1.0) > 0.1, spreads
  config = defaults.get_config()
  config.model.bn_fast_variance = False  # The key reaches every model.
  for name in models.MODEL_NAMES:
    config.model.name = name
    assert models.from_config(config.model, 10).bn_fast_variance is False
