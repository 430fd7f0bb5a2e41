"""XLA:CPU convolutions on Eigen kernels (rpat_jax/xla_cpu.py): the XLA_FLAGS option and its effect."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpat_jax import xla_cpu

MEASURED = xla_cpu.MEASURED_JAXLIB[0]
SETTING = f'{xla_cpu.OPTION}={xla_cpu.VALUE}'


@pytest.mark.parametrize('flags, version, expected', [
    ('', MEASURED, SETTING),
    ('--xla_force_host_platform_device_count=8', MEASURED, f'--xla_force_host_platform_device_count=8 {SETTING}'),
    (f'{xla_cpu.OPTION}=dot,individual_convolution', MEASURED, f'{xla_cpu.OPTION}=dot,individual_convolution'),
    ('--xla_cpu_use_fusion_emitters=false', '0.4.30', '--xla_cpu_use_fusion_emitters=false'),
    ('', None, ''),
])
def test_the_option_is_added_only_where_measured_and_not_chosen(flags, version, expected):
  assert xla_cpu.with_eigen_convolutions(flags, version) == expected


def test_the_pinned_jaxlib_was_measured():
  # A new jaxlib in requirements.txt fails here until its XLA:CPU convolutions are measured again.
  assert xla_cpu.installed_jaxlib() in xla_cpu.MEASURED_JAXLIB


def test_convolutions_compile_to_xla_kernels_in_this_process():
  assert SETTING in os.environ['XLA_FLAGS']  # importing rpat_jax (conftest does) set it
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 4, 5)), jnp.float32)
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  program = conv.lower(x, w).compile().as_text()
  assert 'convolution(' in program and '__ynn_fusion' not in program
  padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = sum(np.einsum('bhwc,co->bhwo', padded[:, dy:dy + 8, dx:dx + 8], np.asarray(w, np.float64)[dy, dx])
                 for dy in range(3) for dx in range(3))
  np.testing.assert_allclose(np.asarray(conv(x, w)), expected, rtol=1e-5, atol=1e-5)
