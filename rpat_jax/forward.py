"""Forward passes with a named BatchNorm mode, over one model and its input normalisation.

Every pass of the train and eval steps says which BatchNorm statistics it uses:
- `eval_logits`: running statistics, nothing changes (the official attack and evaluation mode).
- `batch_stat_logits`: statistics of the batch itself, running statistics untouched.
- `train_logits`: statistics of the batch, and the running statistics updated (PyTorch momentum 0.1);
  returns the new statistics so consecutive calls update them in sequence, as consecutive PyTorch
  train-mode calls do.
"""

import dataclasses
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rpat_jax import models
from rpat_jax.models import layers


@dataclasses.dataclass(frozen=True)
class Forward:
  """A model plus the optional input normalisation; inputs are always images in [0, 1]."""
  model: nn.Module
  mean: Any = None  # [C] or None (no normalisation, as RPAT_Benchmarks).
  std: Any = None

  @classmethod
  def from_config(cls, model_config: ml_collections.ConfigDict, num_classes: int) -> 'Forward':
    model = models.from_config(model_config, num_classes)
    if not model_config.normalize:
      return cls(model)
    return cls(model, tuple(model_config.mean), tuple(model_config.std))

  def _prepare(self, x: jax.Array) -> jax.Array:
    if self.mean is None:
      return x
    return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)

  def init(self, key: jax.Array, x: jax.Array):
    return self.model.init(key, self._prepare(x), train=False)

  def eval_logits(self, params, batch_stats, x: jax.Array) -> jax.Array:
    return self.model.apply({'params': params, 'batch_stats': batch_stats}, self._prepare(x), train=False)

  def train_logits(self, params, batch_stats, x: jax.Array) -> Tuple[jax.Array, Any]:
    logits, updates = self.model.apply({'params': params, 'batch_stats': batch_stats}, self._prepare(x),
                                       train=True, mutable=['batch_stats'])
    return logits, updates['batch_stats']

  def batch_stat_logits(self, params, batch_stats, x: jax.Array) -> jax.Array:
    return self.train_logits(params, batch_stats, x)[0]

  def train_logits_per_rate(self, params, batch_stats, x_stack: jax.Array) -> Tuple[jax.Array, Any]:
    """Train-mode forwards of a stack [R, B, ...], each slice with its own batch statistics.

    Vectorised with vmap (no Python loop over rates). With one slice this is exactly `train_logits`;
    with several, the running statistics take one update with the slices' average batch statistics.
    """
    logits, stats = jax.vmap(lambda x: self.train_logits(params, batch_stats, x))(x_stack)
    return logits, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)

  def train_logits_batched(self, params, batch_stats, x_stack: jax.Array,
                           groups: Sequence[int]) -> Tuple[jax.Array, Any]:
    """Consecutive train-mode forwards of a stack [N, B, ...] as one vmapped pass (one wide batch for the
    hardware), each slice with its own batch statistics, as separate calls have.

    groups: slice counts, in call order, summing to N; a group of several slices is one
    `train_logits_per_rate` call. The running statistics come out as the sequence of calls would leave
    them: a call updates r <- m r + (1 - m) s, so from the per-slice updates u_i = m r0 + (1 - m) s_i
    (all computed from r0) the sequence is r <- m r + (u_i - m r0), exact up to float rounding.
    """
    logits, updated = jax.vmap(lambda x: self.train_logits(params, batch_stats, x))(x_stack)
    momentum = layers.BN_MOMENTUM

    def compose(start, per_slice):
      running, offset = start, 0
      for size in groups:
        update = jnp.mean(per_slice[offset:offset + size], axis=0)
        running = momentum * running + (update - momentum * start)
        offset += size
      return running

    return logits, jax.tree.map(compose, batch_stats, updated)
