"""Per-point losses of AutoAttack on raw logits (no softmax), as the official code computes them.

Each takes logits [B, K] and labels [B] (and targets [B]) and returns [B] float32. Gradients flow
through every term, the sort included, as in the official code (docs/autoattack.md, section 2.2).
"""

import jax
import jax.numpy as jnp
import optax

_FLOOR = 1e-12


def cross_entropy(logits: jax.Array, labels: jax.Array, targets=None) -> jax.Array:
  del targets
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _label_logit(logits, labels):
  return jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]


def dlr(logits: jax.Array, labels: jax.Array, targets=None) -> jax.Array:
  """-(z_y - max_{i != y} z_i) / (pi_1 - pi_3 + 1e-12), pi sorted descending, z_y included."""
  del targets
  logits = logits.astype(jnp.float32)
  ordered = jnp.sort(logits, axis=1)
  top_is_label = jnp.argmax(logits, axis=1) == labels
  best_other = jnp.where(top_is_label, ordered[:, -2], ordered[:, -1])
  return -(_label_logit(logits, labels) - best_other) / (ordered[:, -1] - ordered[:, -3] + _FLOOR)


def dlr_targeted(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
  """-(z_y - z_t) / (pi_1 - (pi_3 + pi_4) / 2 + 1e-12); needs K >= 4."""
  logits = logits.astype(jnp.float32)
  ordered = jnp.sort(logits, axis=1)
  numerator = _label_logit(logits, labels) - _label_logit(logits, targets)
  return -numerator / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + _FLOOR)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """z_y - max_{j != y} z_j: negative iff the point is misclassified (Square's loss)."""
  logits = logits.astype(jnp.float32)
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[1], dtype=bool), -jnp.inf, logits)
  return _label_logit(logits, labels) - others.max(axis=1)


def cw_loss_sum(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The Carlini-Wagner margin max_{j != y} z_j - z_y summed over the batch: the loss PGD-CW ascends."""
  return -jnp.sum(margin(logits, labels))


LOSSES = {'ce': cross_entropy, 'dlr': dlr, 'dlr-targeted': dlr_targeted}
