"""Shared checks of the evaluation's convolution forms (`phase_conv`, `patch_conv`) against XLA's."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from rpat_jax.cpu import chunks


def gradients(conv, inputs, kernel, padding, cotangent):
  """The input and kernel gradients of sum(conv(inputs, kernel, padding) * cotangent), jitted (one compile,
  not one per operation)."""
  loss = lambda x, k, c: jnp.sum(conv(x, k, padding).astype(jnp.float32) * c)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(inputs, kernel, cotangent)


def check_values_and_gradients(conv, xla, inputs, paddings, *, exact_values: bool) -> int:
  """conv's values (bit for bit where exact_values) and input and kernel gradients equal xla's for kernels
  of sizes 1, 2, 3 and 5 (4 output channels) under each padding that fits; returns how many cases ran."""
  height, width, channels = inputs.shape[1:]
  checked = 0
  for size, padding in itertools.product([1, 2, 3, 5], paddings):
    if min(height + sum(padding[0]), width + sum(padding[1])) < size:
      continue
    kernel = jax.random.normal(jax.random.key(size), (size, size, channels, 4))
    expected = xla(inputs, kernel, padding)
    if exact_values:
      np.testing.assert_array_equal(conv(inputs, kernel, padding), expected)
    else:
      np.testing.assert_allclose(conv(inputs, kernel, padding), expected, rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(jax.random.key(7), expected.shape)
    for got, want in zip(gradients(conv, inputs, kernel, padding, cotangent),
                         gradients(xla, inputs, kernel, padding, cotangent)):
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    checked += 1
  return checked


def check_bfloat16_and_vmap(conv, xla, channels: int, bfloat16_atol: float):
  """conv's input gradient equals xla's under vmap (float32), and keeps bfloat16 close to xla's."""
  inputs = jax.random.normal(jax.random.key(1), (3, 2, 8, 8, channels))
  kernel = jax.random.normal(jax.random.key(2), (3, 3, channels, 5))
  padding = ((1, 1), (1, 1))
  grad = lambda form: jax.vmap(jax.grad(lambda x: jnp.sum(jnp.tanh(form(x, kernel, padding)))))
  np.testing.assert_allclose(jax.jit(grad(conv))(inputs), jax.jit(grad(xla))(inputs), rtol=1e-5, atol=1e-5)
  low = inputs[0].astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  got = jax.grad(lambda x: jnp.sum(conv(x, low[1], padding).astype(jnp.float32)))(low[0])
  want = jax.grad(lambda x: jnp.sum(xla(x, low[1], padding).astype(jnp.float32)))(low[0])
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), rtol=2e-2, atol=bfloat16_atol)


def gradient_convolutions(conv, inputs, kernel, padding=((1, 1), (1, 1))):
  """The convolution equations in the jaxpr of the input gradient of sum(conv(inputs, kernel, padding))."""
  found = []

  def visit(eqn):
    if eqn.primitive.name == 'conv_general_dilated':
      found.append(eqn)
  jaxpr = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(conv(x, kernel, padding))))(inputs)
  chunks.walk_equations(jaxpr.jaxpr, visit)
  return found
