"""XLA:CPU convolutions on Eigen kernels (rpat_jax/cpu/xla_flags.py): the XLA_FLAGS option and its effect."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpat_jax import cpu
from rpat_jax.cpu import xla_flags

MEASURED = xla_flags.MEASURED_JAXLIB[0]
SETTING = f'{xla_flags.OPTION}={xla_flags.VALUE}'


@pytest.mark.parametrize('flags, version, expected', [
    ('', MEASURED, SETTING),
    ('--xla_force_host_platform_device_count=8', MEASURED, f'--xla_force_host_platform_device_count=8 {SETTING}'),
    (f'{xla_flags.OPTION}=dot,individual_convolution', MEASURED, f'{xla_flags.OPTION}=dot,individual_convolution'),
    ('--xla_cpu_use_fusion_emitters=false', '0.4.30', '--xla_cpu_use_fusion_emitters=false'),
    ('', None, ''),
])
def test_the_option_is_added_only_where_measured_and_not_chosen(flags, version, expected):
  assert xla_flags.with_eigen_convolutions(flags, version) == expected


@pytest.mark.parametrize('platforms, plugin, expected', [
    ('cpu', True, True), ('cuda', False, False), ('tpu,cpu', False, False), ('', False, True), ('', True, False)])
def test_the_cpu_is_expected_from_jax_platforms_else_from_the_installed_runtimes(monkeypatch, platforms, plugin,
                                                                                  expected):
  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  monkeypatch.setattr(cpu, '_accelerator_plugin_installed', lambda: plugin)
  assert cpu.expected_before_start() == expected


def test_the_environment_is_left_alone_where_another_backend_is_expected(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  monkeypatch.setattr(xla_flags, 'installed_jaxlib', lambda: MEASURED)
  xla_flags.prefer_eigen_convolutions()
  assert os.environ['XLA_FLAGS'] == '--xla_force_host_platform_device_count=2'
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  xla_flags.prefer_eigen_convolutions()
  assert os.environ['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=2 {SETTING}'


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='reads XLA:CPU compiled text')
@pytest.mark.skipif(xla_flags.installed_jaxlib() not in xla_flags.MEASURED_JAXLIB,
                    reason='this jaxlib was not measured, so the option is not set')
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
