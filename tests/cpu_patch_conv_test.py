"""The thin-input stride-1 convolution with a patch-form input gradient (`patch_conv`): XLA's values and
gradients for every kernel size, padding and input size, in float32 and bfloat16, under vmap, and an input
gradient that no convolution computes."""

import jax
from jax import lax
import jax.numpy as jnp
import pytest

import conv_checks
from rpat_jax.cpu import patch_conv

pytestmark = pytest.mark.cpu_only

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def _xla(inputs, kernel, padding):
  return lax.conv_general_dilated(inputs, kernel, (1, 1), padding, dimension_numbers=_DIMENSIONS)


_PADDINGS = [((1, 1), (1, 1)), ((2, 0), (0, 3)), ((0, 0), (0, 0))]  # Symmetric, one-sided, none.


@pytest.mark.parametrize('height, width, channels', [(7, 6, 3), (8, 9, 1)])
def test_values_and_gradients_equal_xla_for_every_kernel_and_padding(height, width, channels):
  inputs = jax.random.normal(jax.random.key(0), (2, height, width, channels))
  assert conv_checks.check_values_and_gradients(patch_conv.conv_thin, _xla, inputs, _PADDINGS,
                                                exact_values=False) == 12


def test_bfloat16_and_vmap():
  conv_checks.check_bfloat16_and_vmap(patch_conv.conv_thin, _xla, channels=3, bfloat16_atol=5e-2)


def test_the_input_gradient_is_no_convolution():
  inputs, kernel = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  for conv, count in ((_xla, 1), (patch_conv.conv_thin, 0)):  # Convolutions that output an input gradient.
    shapes = [eqn.outvars[0].aval.shape for eqn in conv_checks.gradient_convolutions(conv, inputs, kernel)]
    assert shapes.count(inputs.shape) == count, shapes
