"""Shared checks of the evaluation's convolution forms (`phase_conv`, `patch_conv`) against XLA's."""

import jax
import jax.numpy as jnp
import numpy as np


def gradients(conv, inputs, kernel, padding, cotangent):
  """The input and kernel gradients of sum(conv(inputs, kernel, padding) * cotangent), jitted (one compile,
  not one per operation)."""
  loss = lambda x, k, c: jnp.sum(conv(x, k, padding).astype(jnp.float32) * c)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(inputs, kernel, cotangent)


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
