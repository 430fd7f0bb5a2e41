"""On-device augmentation, inside the jitted train step: random crop with padding and horizontal flip."""

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [..., H, W, C] -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def random_crop_flip(key: jax.Array, images: jax.Array, *, padding: int = 4, pad_mode: str = 'constant',
                     flip: bool = True) -> jax.Array:
  """Per-example random crop of the padded image and a coin-flip horizontal flip.

  Args:
    key: PRNG key; the same key gives the same crops and flips.
    images: uint8 [B, H, W, C].
    padding: pixels added on each side before cropping back to H x W (offsets uniform in [0, 2p]).
    pad_mode: 'constant' (zeros, torchvision RandomCrop(padding=4) as the official Benchmarks code) or
      'reflect' (ReBAT).
    flip: flip each image left-right with probability 1/2.

  Returns:
    float32 [B, H, W, C] in [0, 1].
  """
  x = to_float(images)
  batch, height, width, _ = x.shape
  crop_key, flip_key = jax.random.split(key)
  if padding > 0:
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=pad_mode)
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * padding + 1)
    x = jax.vmap(lambda image, offset: jax.lax.dynamic_slice(
        image, (offset[0], offset[1], 0), (height, width, image.shape[-1])))(padded, offsets)
  if flip:
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    x = jnp.where(flips[:, None, None, None], x[:, :, ::-1, :], x)
  return x
