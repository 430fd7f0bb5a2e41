"""PGD attacks as pure functions of a `logits_fn`, compiled with the train / eval step.

`logits_fn(x) -> [B, K] float32 logits` closes over the parameters and fixes the BatchNorm mode, so
the same attack serves training (BN eval mode, as RPAT_Benchmarks) and evaluation. Images are NHWC in
[0, 1]; eps and step sizes are fractions of that range (8/255, not 8). The step loop is a
`lax.fori_loop`: one compiled body, whatever the number of steps.

Semantics follow advertorch's `PGDAttack` used by the official code ([B]; docs/fidelity.md):
- Linf: delta ~ U(-eps, eps), clipped so x + delta is an image; step delta += step * sign(g), clamp to
  [-eps, eps], clip x + delta to [0, 1].
- L2: start from a uniform random image u, delta = u - x shrunk into the eps-ball, clipped to the image
  box; step delta += step * g / max(|g|_2, 1e-6), clip x + delta to [0, 1], then shrink into the ball.
The gradient is that of the summed cross-entropy, so a point's step does not depend on the batch size
(the official mean-CE gradient gives the same sign and the same direction).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

LogitsFn = Callable[[jax.Array], jax.Array]
EVAL_PGD_STEPS = 20  # The final evaluation's PGD-20 (rpat_jax.evaluate and its benchmark).
_L2_FLOOR = 1e-6  # advertorch's `small` constant for normalising the gradient and the perturbation.


def _per_example_l2(v: jax.Array) -> jax.Array:
  """L2 norm of each example, shaped to broadcast against v: [B, 1, 1, 1]."""
  axes = tuple(range(1, v.ndim))
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))


def project_linf(delta: jax.Array, eps: float) -> jax.Array:
  return jnp.clip(delta, -eps, eps)


def project_l2(delta: jax.Array, eps: float) -> jax.Array:
  """Shrinks each example of delta into the L2 ball of radius eps (points inside are unchanged)."""
  norm = jnp.maximum(_per_example_l2(delta), _L2_FLOOR)
  return delta * jnp.minimum(1.0, eps / norm)


def clip_to_image(x: jax.Array, delta: jax.Array) -> jax.Array:
  """The delta that keeps x + delta inside [0, 1]."""
  return jnp.clip(x + delta, 0.0, 1.0) - x


def point_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
  """One key per point, folded from `key` with the point's index among all points: [N] typed keys, so a
  point's randomness does not depend on the batch it is attacked in."""
  return jax.vmap(lambda index: jax.random.fold_in(key, index))(indices)


def random_start(key: jax.Array, x: jax.Array, *, norm: str, eps: float) -> jax.Array:
  """A random initial perturbation inside the threat set, as advertorch's `rand_init_delta`.

  key: one key for the batch, or one typed key per point ([B]): then each point's start depends only on its
  own key, not on which batch it is in.
  """
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1:
    return jax.vmap(lambda k, point: random_start(k, point[None], norm=norm, eps=eps)[0])(key, x)
  if norm == 'linf':
    delta = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  elif norm == 'l2':
    delta = project_l2(jax.random.uniform(key, x.shape, x.dtype) - x, eps)
  else:
    raise ValueError(f'norm={norm!r}; allowed: linf, l2')
  return clip_to_image(x, delta)


def cross_entropy_sum(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels))


def pgd(logits_fn: LogitsFn, key: jax.Array, x: jax.Array, labels: jax.Array, *, norm: str, eps: float,
        step_size: float, steps: int, random_init: bool = True,
        loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy_sum, unroll: bool = False) -> jax.Array:
  """Projected gradient ascent on `loss_fn(logits_fn(x + delta), labels)`.

  Args:
    logits_fn: x [B, H, W, C] -> logits [B, K].
    key: PRNG key for the random start (or [B] keys, one per point).
    x: clean images [B, H, W, C] float32 in [0, 1].
    labels: [B] int labels.
    norm: 'linf' or 'l2'.
    eps, step_size: radius and step, fractions of the [0, 1] pixel range.
    steps: number of gradient steps (a static Python int).
    random_init: start from a random point of the threat set (True) or from x.
    loss_fn: (logits, labels) -> scalar to maximise; summed over the batch.
    unroll: write the steps out in the compiled program instead of one loop body (the same computation;
      faster on XLA:CPU, see `attack.unroll`; and XLA's cost analysis counts a loop body once, so FLOPs
      are counted on this form).

  Returns:
    x_adv [B, H, W, C] in [0, 1], within eps of x, with no gradient path to the parameters.
  """
  if norm not in ('linf', 'l2'):
    raise ValueError(f'norm={norm!r}; allowed: linf, l2')
  x = jax.lax.stop_gradient(x)
  delta = random_start(key, x, norm=norm, eps=eps) if random_init else jnp.zeros_like(x)
  step = lambda _, delta: pgd_step(logits_fn, x, labels, delta, norm=norm, eps=eps, step_size=step_size,
                                   loss_fn=loss_fn)
  delta = jax.lax.fori_loop(0, steps, step, delta, unroll=unroll)
  return jax.lax.stop_gradient(jnp.clip(x + delta, 0.0, 1.0))


def pgd_step(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, delta: jax.Array, *, norm: str, eps: float,
             step_size: float, loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy_sum) -> jax.Array:
  """One step of `pgd`: the new delta (one gradient pass per point)."""
  grad = jax.grad(lambda d: loss_fn(logits_fn(x + d), labels))(delta)
  if norm == 'linf':
    return clip_to_image(x, project_linf(delta + step_size * jnp.sign(grad), eps))
  grad = grad / jnp.maximum(_per_example_l2(grad), _L2_FLOOR)
  return project_l2(clip_to_image(x, delta + step_size * grad), eps)


def _renorm_l2(delta: jax.Array, eps: float) -> jax.Array:
  """PyTorch's `renorm(p=2, dim=0, maxnorm=eps)`: examples longer than eps are scaled to eps (+1e-7)."""
  norm = _per_example_l2(delta)
  return jnp.where(norm > eps, delta * (eps / (norm + 1e-7)), delta)


def small_noise_pgd(logits_fn: LogitsFn, key: jax.Array, x: jax.Array,
                    loss_fn: Callable[[jax.Array], jax.Array], *, norm: str, eps: float, step_size: float,
                    steps: int, unroll: bool = False) -> jax.Array:
  """The TRADES / MART inner maximisation of the official code (adv_lib/trades.py, adv_lib/mart.py).

  Starts at x + 0.001 N(0, 1) (not clipped) and ascends `loss_fn(logits) -> scalar`. Linf: sign step,
  project onto the eps-box, clip to [0, 1]. L2: step along g / (|g|_2 + 1e-8), renorm delta to eps, clip.
  `unroll` as in `pgd`.
  """
  if norm not in ('linf', 'l2'):
    raise ValueError(f'norm={norm!r}; allowed: linf, l2')
  x = jax.lax.stop_gradient(x)
  grad_fn = jax.grad(lambda z: loss_fn(logits_fn(z)))

  def step(_, x_adv):
    grad = grad_fn(x_adv)
    if norm == 'linf':
      x_adv = jnp.clip(x_adv + step_size * jnp.sign(grad), x - eps, x + eps)
    else:
      x_adv = x + _renorm_l2(x_adv + step_size * grad / (_per_example_l2(grad) + 1e-8) - x, eps)
    return jnp.clip(x_adv, 0.0, 1.0)

  x_start = x + 0.001 * jax.random.normal(key, x.shape, x.dtype)
  return jax.lax.stop_gradient(jnp.clip(jax.lax.fori_loop(0, steps, step, x_start, unroll=unroll), 0.0, 1.0))


def _sotas_l2_start(key: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """[S]'s L2 start: a Gaussian direction at a radius drawn uniformly from [0, eps]."""
  direction_key, radius_key = jax.random.split(key)
  direction = jax.random.normal(direction_key, x.shape, x.dtype)
  radius = jax.random.uniform(radius_key, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  return direction / _per_example_l2(direction) * radius * eps


def pgd_sotas(logits_fn: LogitsFn, key: jax.Array, x: jax.Array, labels: jax.Array, *, norm: str, eps: float,
              step_size: float, steps: int, random_init: bool = True, unroll: bool = False) -> jax.Array:
  """RPAT_SOTAs' (ReBAT's) `attack_pgd` with one restart, on the cross-entropy.

  Linf is advertorch's PGD (`pgd`): a start uniform in the eps-box, sign steps, project, clip to [0, 1].
  L2 differs from advertorch in its start and step: a Gaussian direction at a radius uniform in
  [0, eps], clipped to the image box; then delta += step * g / (|g|_2 + 1e-10), renormed to eps
  (`torch.renorm`), clipped to the image box. Shapes and units as `pgd`.
  """
  if norm == 'linf':
    return pgd(logits_fn, key, x, labels, norm=norm, eps=eps, step_size=step_size, steps=steps,
               random_init=random_init, unroll=unroll)
  if norm != 'l2':
    raise ValueError(f'norm={norm!r}; allowed: linf, l2')
  x = jax.lax.stop_gradient(x)
  delta = clip_to_image(x, _sotas_l2_start(key, x, eps)) if random_init else jnp.zeros_like(x)
  grad_fn = jax.grad(lambda d: cross_entropy_sum(logits_fn(x + d), labels))

  def step(_, delta):
    grad = grad_fn(delta)
    delta = _renorm_l2(delta + step_size * grad / (_per_example_l2(grad) + 1e-10), eps)
    return clip_to_image(x, delta)

  delta = jax.lax.fori_loop(0, steps, step, delta, unroll=unroll)
  return jax.lax.stop_gradient(jnp.clip(x + delta, 0.0, 1.0))
