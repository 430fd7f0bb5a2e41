"""The stride-2 convolution with phased input gradients (`phase_conv`): XLA's values and gradients for
every kernel size, padding and input size, in float32 and bfloat16, under vmap, and no dilated input."""

import itertools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import conv_checks
from rpat_jax import cpu_chunks, phase_conv

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def _xla(inputs, kernel, padding):
  return lax.conv_general_dilated(inputs, kernel, (2, 2), padding, dimension_numbers=_DIMENSIONS)


_PADDINGS = [((1, 1), (1, 1)), ((2, 0), (0, 3)), ((0, 1), (1, 0))]  # Symmetric, and each side alone.


@pytest.mark.parametrize('height, width', [(7, 6), (8, 9)])
def test_values_and_gradients_equal_xla_for_every_kernel_and_padding(height, width):
  inputs = jax.random.normal(jax.random.key(0), (2, height, width, 3))
  checked = 0
  for size, padding in itertools.product([1, 2, 3, 5], _PADDINGS):
    if min(height + sum(padding[0]), width + sum(padding[1])) < size:
      continue
    kernel = jax.random.normal(jax.random.key(size), (size, size, 3, 4))
    expected = _xla(inputs, kernel, padding)
    np.testing.assert_array_equal(phase_conv.conv_stride2(inputs, kernel, padding), expected)
    cotangent = jax.random.normal(jax.random.key(7), expected.shape)
    for got, want in zip(conv_checks.gradients(phase_conv.conv_stride2, inputs, kernel, padding, cotangent),
                         conv_checks.gradients(_xla, inputs, kernel, padding, cotangent)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    checked += 1
  assert checked == 12


def test_bfloat16_and_vmap():
  conv_checks.check_bfloat16_and_vmap(phase_conv.conv_stride2, _xla, channels=4, bfloat16_atol=2e-2)


def test_the_input_gradient_convolves_no_dilated_gradient():
  inputs, kernel = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  dilated = []

  def visit(eqn):
    if eqn.primitive.name == 'conv_general_dilated':
      dilated.append(any(d != 1 for d in eqn.params['lhs_dilation']))
  for conv, count in ((_xla, 1), (phase_conv.conv_stride2, 0)):
    dilated.clear()
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, c=conv: jnp.sum(c(x, kernel, ((1, 1), (1, 1))))))(inputs)
    cpu_chunks.walk_equations(jaxpr.jaxpr, visit)
    assert sum(dilated) == count
