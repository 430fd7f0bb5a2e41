"""The stride-2 convolution with phased input gradients (`phase_conv`): XLA's values and gradients for
every kernel size, padding and input size, in float32 and bfloat16, under vmap, and no dilated input."""

import jax
from jax import lax
import jax.numpy as jnp
import pytest

import conv_checks
from rpat_jax.cpu import phase_conv

pytestmark = pytest.mark.cpu_only

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def _xla(inputs, kernel, padding):
  return lax.conv_general_dilated(inputs, kernel, (2, 2), padding, dimension_numbers=_DIMENSIONS)


_PADDINGS = [((1, 1), (1, 1)), ((2, 0), (0, 3)), ((0, 1), (1, 0))]  # Symmetric, and each side alone.


@pytest.mark.parametrize('height, width', [(7, 6), (8, 9)])
def test_values_and_gradients_equal_xla_for_every_kernel_and_padding(height, width):
  inputs = jax.random.normal(jax.random.key(0), (2, height, width, 3))
  assert conv_checks.check_values_and_gradients(phase_conv.conv_stride2, _xla, inputs, _PADDINGS,
                                                exact_values=True) == 12


def test_bfloat16_and_vmap():
  conv_checks.check_bfloat16_and_vmap(phase_conv.conv_stride2, _xla, channels=4, bfloat16_atol=2e-2)


def test_the_input_gradient_convolves_no_dilated_gradient():
  inputs, kernel = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  for conv, count in ((_xla, 1), (phase_conv.conv_stride2, 0)):
    dilated = [any(d != 1 for d in eqn.params['lhs_dilation'])
               for eqn in conv_checks.gradient_convolutions(conv, inputs, kernel)]
    assert sum(dilated) == count
