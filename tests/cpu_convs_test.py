"""Evaluation's convolutions in XLA:CPU's fast forms (`rpat_jax.cpu.convs`): thin inputs on padded channels and
stride-2 input gradients in phases give the same logits and gradients, on the layers they are for, and
every other layer is left as written."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpat_jax import models
from rpat_jax.cpu import chunks
from rpat_jax.cpu import convs

pytestmark = pytest.mark.cpu_only


class _Net(nn.Module):
  """An RGB stem (with bias, stride 2, 'SAME'), a layer of 8 input channels, and a dense head."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2, padding='SAME', name='stem')(x))
    x = nn.relu(nn.Conv(4, (3, 3), padding=1, use_bias=False, name='body')(x))
    return nn.Dense(5, name='head')(x.mean((1, 2)))


def _problem():
  net = _Net()
  x = jax.random.uniform(jax.random.key(0), (6, 12, 12, 3))
  variables = net.init(jax.random.key(1), x)
  return (lambda images: net.apply(variables, images)), x


def _convolution_input_channels(fn, x):
  """The input channel count of each convolution in fn's jaxpr."""
  found = []

  def visit(eqn):
    if eqn.primitive.name == 'conv_general_dilated':
      found.append(eqn.invars[0].aval.shape[-1])
  chunks.walk_equations(jax.make_jaxpr(fn)(x).jaxpr, visit)
  return found


def _dilated_convolutions(fn, x):
  """How many convolutions in fn's jaxpr dilate their input: XLA's form of a strided input gradient."""
  found = []

  def visit(eqn):
    if eqn.primitive.name == 'conv_general_dilated' and any(d != 1 for d in eqn.params['lhs_dilation']):
      found.append(eqn)
  chunks.walk_equations(jax.make_jaxpr(fn)(x).jaxpr, visit)
  return len(found)


def _input_gradient(fn):
  return jax.grad(lambda images: jnp.sum(jax.nn.log_softmax(fn(images))[:, 0]))


def test_the_rgb_stem_runs_on_padded_channels_with_the_same_logits_and_gradients():
  logits_fn, x = _problem()
  padded = convs.for_attacks(logits_fn)
  assert _convolution_input_channels(logits_fn, x) == [3, 8]
  assert _convolution_input_channels(padded, x) == [convs.MIN_CHANNELS, 8]  # Only the stem changed.
  np.testing.assert_allclose(jax.jit(padded)(x), jax.jit(logits_fn)(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.jit(_input_gradient(padded))(x), jax.jit(_input_gradient(logits_fn))(x),
                             rtol=1e-5, atol=1e-7)
  # The stem has stride 2: XLA's input gradient dilates the output gradient, the phases do not.
  assert _dilated_convolutions(_input_gradient(logits_fn), x) == 1
  assert _dilated_convolutions(_input_gradient(padded), x) == 0


def test_functions_without_flax_convolutions_and_other_backends_are_left_alone(monkeypatch):
  weights = jax.random.normal(jax.random.key(2), (3, 3, 3, 4))
  plain = lambda images: jax.lax.conv_general_dilated(images, weights, (1, 1), 'SAME',
                                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC')).mean((1, 2))
  x = jnp.ones((2, 8, 8, 3))
  assert _convolution_input_channels(convs.for_attacks(plain), x) == [3]  # Not a Flax layer: as written.
  logits_fn, _ = _problem()
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert convs.for_attacks(logits_fn) is logits_fn


@pytest.mark.parametrize('model, fields, strided', [
    ('small_cnn', {'width': 8}, 2),
    ('wide_resnet', {'depth': 10, 'widen_factor': 1}, 4)])  # Two 3x3 layers and two 1x1 shortcuts.
def test_the_models_agree_in_the_fast_forms(model, fields, strided):
  net = models.create_model(model, num_classes=10, **fields)
  x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 3))
  variables = net.init(jax.random.key(4), x, train=False)
  logits_fn = lambda images: net.apply(variables, images, train=False)
  padded = convs.for_attacks(logits_fn)
  assert _convolution_input_channels(padded, x)[0] == convs.MIN_CHANNELS
  np.testing.assert_allclose(jax.jit(padded)(x), jax.jit(logits_fn)(x), rtol=1e-5, atol=1e-5)
  assert _dilated_convolutions(_input_gradient(logits_fn), x) == strided
  assert _dilated_convolutions(_input_gradient(padded), x) == 0
  expected = jax.jit(_input_gradient(logits_fn))(x)
  np.testing.assert_allclose(jax.jit(_input_gradient(padded))(x), expected, rtol=1e-4,
                             atol=1e-5 * float(jnp.max(jnp.abs(expected))))
