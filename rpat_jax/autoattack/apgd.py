"""APGD (Croce & Hein, 2020) with the CE, DLR and targeted-DLR losses, as AutoAttack runs it.

Semantics are those of the official `autopgd_base.py` (docs/autoattack.md, section 2), per point:
its own step size, best loss, best point and gradient, and checkpoint memories; the checkpoint
iterations are shared. The differences are only in how it runs: one compiled function per batch,
the iterations a `lax.fori_loop`, restarts and targets a second `lax` loop with masks (a point fooled
in one run is not attacked again: its adversarial is that of the first successful run), and the
random start drawn from the point's own key, so a point's result does not depend on its batch.
One iteration is `run_iteration` (the start `run_start`): `apgd` loops over it in `lax`, and
`compacted.make_apgd`, what the ensemble runs, calls their parts (`propose`, `loss_and_grad`, `update`,
`start_carry`) as one program from the host on the points still robust.

Images are NHWC float32 in [0, 1]; eps is in the same units (8/255, not 8).
"""

import functools
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rpat_jax.autoattack import losses

LogitsFn = Callable[[jax.Array], jax.Array]
_FLOOR = 1e-12
NORMS = ('Linf', 'L2')


def checkpoint_schedule(n_iter: int):
  """Boolean mask [n_iter] of the checkpoint iterations and the window length at each (0 elsewhere).

  For n_iter = 100: iterations 21, 40, 56, 69, 79, 86, 92, 98 with windows 22, 19, 16, 13, 10, 7, 6, 6.
  """
  window, shrink, shortest = max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
  is_checkpoint, windows, counter = np.zeros(n_iter, bool), np.zeros(n_iter, np.int32), 0
  for i in range(n_iter):
    counter += 1
    if counter == window:
      is_checkpoint[i], windows[i], counter = True, window, 0
      window = max(window - shrink, shortest)
  return is_checkpoint, windows


def _per_point(fn, v):
  return fn(v.reshape(v.shape[0], -1), axis=1).reshape((-1,) + (1,) * (v.ndim - 1))


def _l2(v):
  return jnp.sqrt(_per_point(jnp.sum, jnp.square(v)))


def normalize(v: jax.Array, norm: str) -> jax.Array:
  """v divided per point by its Linf or L2 norm + 1e-12 (zero stays zero)."""
  size = _per_point(jnp.max, jnp.abs(v)) if norm == 'Linf' else _l2(v)
  return v / (size + _FLOOR)


def project(x: jax.Array, v: jax.Array, *, norm: str, eps: float) -> jax.Array:
  """The official projection: Linf exactly onto ball and box; L2 scale into the ball, then clip."""
  if norm == 'Linf':
    return jnp.clip(jnp.minimum(jnp.maximum(v, x - eps), x + eps), 0.0, 1.0)
  delta = v - x
  return jnp.clip(x + normalize(delta, 'L2') * jnp.minimum(eps, _l2(delta)), 0.0, 1.0)


def start_point(x: jax.Array, noise: jax.Array, *, norm: str, eps: float) -> jax.Array:
  """x + eps * noise / |noise| clipped to the box: noise ~ U[-1, 1] for Linf (so one coordinate sits
  exactly at +-eps; not uniform in the ball), N(0, I) for L2 (on the sphere before clipping)."""
  return jnp.clip(x + eps * normalize(noise, norm), 0.0, 1.0)


def draw_noise(keys: jax.Array, shape, *, norm: str) -> jax.Array:
  """One start-noise draw per point from its key: [B, *shape]."""
  if norm == 'Linf':
    return jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0))(keys)
  return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)


def _where(mask, a, b):
  return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def loss_and_grad(logits_fn: LogitsFn, loss: str, y, targets, images):
  """(per-point loss [B], correctly classified [B], input gradient of the summed loss): one gradient pass."""
  loss_fn = losses.LOSSES[loss]

  def total(z):
    logits = logits_fn(z)
    per_point = loss_fn(logits, y, targets)
    return per_point.sum(), (per_point, logits)
  (_, (per_point, logits)), grad = jax.value_and_grad(total, has_aux=True)(images)
  return per_point, jnp.argmax(logits, axis=1) == y, grad


# The state of a run, per point (field order is the carry's).
CARRY = ('x_adv', 'x_old', 'grad', 'grad_best', 'x_best', 'x_best_adv', 'loss_best', 'correct', 'step',
         'loss_prev', 'increases', 'reduced_last', 'loss_best_last', 'zero_grad')


def start_carry(x_start, loss0, correct0, grad0, *, eps: float) -> Dict[str, jax.Array]:
  """The carry of a run before its first iteration, from the loss, correctness and gradient at x_start.

  zero_grad [B] marks a zero gradient at the start.
  """
  step0 = jnp.full((x_start.shape[0],) + (1,) * (x_start.ndim - 1), 2.0 * eps, jnp.float32)
  zero_grad = jnp.sum(jnp.abs(grad0).reshape(grad0.shape[0], -1), axis=1) == 0
  # The official loss history is a zero-filled buffer: the first comparison is against 0.0.
  return dict(zip(CARRY, (x_start, x_start, grad0, grad0, x_start, x_start, loss0, correct0, step0,
                          jnp.zeros_like(loss0), jnp.zeros(loss0.shape, jnp.int32), jnp.ones(loss0.shape, bool),
                          loss0, zero_grad)))


@functools.lru_cache(maxsize=None)
def carry_shapes(image_shape: tuple) -> Dict[str, jax.ShapeDtypeStruct]:
  """The shapes and dtypes of a carry for images of image_shape [B, H, W, C] (nothing is computed; traced
  once per shape)."""
  batch = jax.ShapeDtypeStruct(image_shape[:1], jnp.float32)
  images = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
  correct = jax.ShapeDtypeStruct(image_shape[:1], jnp.bool_)
  return jax.eval_shape(lambda *args: start_carry(*args, eps=1.0), images, batch, correct, images)


def run_start(logits_fn: LogitsFn, x, y, targets, x_start, *, eps: float, loss: str) -> Dict[str, jax.Array]:
  """The carry of a run before its first iteration: the loss and gradient at x_start (one gradient pass)."""
  del x
  return start_carry(x_start, *loss_and_grad(logits_fn, loss, y, targets, x_start), eps=eps)


def propose(x, carry: Dict[str, jax.Array], i, *, norm: str, eps: float) -> jax.Array:
  """Iteration i's new iterate: a step along the gradient's direction, then momentum, each projected."""
  direction = jnp.sign if norm == 'Linf' else (lambda g: normalize(g, 'L2'))
  momentum = carry['x_adv'] - carry['x_old']
  a = jnp.where(i > 0, 0.75, 1.0)
  z = project(x, carry['x_adv'] + carry['step'] * direction(carry['grad']), norm=norm, eps=eps)
  return project(x, carry['x_adv'] + (z - carry['x_adv']) * a + momentum * (1 - a), norm=norm, eps=eps)


def update(carry: Dict[str, jax.Array], x_adv, loss_i, correct_i, grad, i, *, n_iter: int,
           rho: float = 0.75) -> Dict[str, jax.Array]:
  """The carry after iteration i (0-based, may be traced), given its iterate x_adv and the loss,
  correctness and gradient there."""
  is_checkpoint, windows = (jnp.asarray(a) for a in checkpoint_schedule(n_iter))
  c = dict(carry)
  c['x_old'] = c['x_adv']
  c['correct'] = c['correct'] & correct_i
  c['x_best_adv'] = _where(~correct_i, x_adv, c['x_best_adv'])
  improved = loss_i > c['loss_best']
  c['x_best'], c['grad_best'] = _where(improved, x_adv, c['x_best']), _where(improved, grad, c['grad_best'])
  c['loss_best'] = jnp.where(improved, loss_i, c['loss_best'])
  increases = c['increases'] + (loss_i > c['loss_prev'])
  c['loss_prev'] = loss_i

  # Checkpoint: halve the step where the loss oscillated or the best loss stalled since the last one.
  check = is_checkpoint[i]
  oscillating = increases <= windows[i] * rho
  stalled = ~c['reduced_last'] & (c['loss_best_last'] >= c['loss_best'])
  reduce = check & (oscillating | stalled)
  c['reduced_last'] = jnp.where(check, oscillating | stalled, c['reduced_last'])
  c['loss_best_last'] = jnp.where(check, c['loss_best'], c['loss_best_last'])
  c['increases'] = jnp.where(check, 0, increases)
  c['step'] = _where(reduce, c['step'] / 2.0, c['step'])
  c['x_adv'], c['grad'] = _where(reduce, c['x_best'], x_adv), _where(reduce, c['grad_best'], grad)
  return c


def run_iteration(logits_fn: LogitsFn, x, y, targets, carry: Dict[str, jax.Array], i, *, norm: str, eps: float,
                  loss: str, n_iter: int, rho: float = 0.75) -> Dict[str, jax.Array]:
  """Iteration i (0-based, may be traced) of a run: one gradient pass per point."""
  x_adv = propose(x, carry, i, norm=norm, eps=eps)
  return update(carry, x_adv, *loss_and_grad(logits_fn, loss, y, targets, x_adv), i, n_iter=n_iter, rho=rho)


def single_run(logits_fn: LogitsFn, x, y, targets, x_start, *, norm: str, eps: float, loss: str,
               n_iter: int, rho: float = 0.75):
  """One APGD run from x_start. Returns (x_best, still_correct, loss_best, x_best_adv, zero_grad).

  still_correct [B] is False where some iterate (the start included) was misclassified; x_best_adv
  is then the most recent misclassified iterate. zero_grad [B] marks a zero gradient at the start.
  """
  carry = run_start(logits_fn, x, y, targets, x_start, eps=eps, loss=loss)
  iteration = lambda i, c: run_iteration(logits_fn, x, y, targets, c, i, norm=norm, eps=eps, loss=loss,
                                         n_iter=n_iter, rho=rho)
  carry = jax.lax.fori_loop(0, n_iter, iteration, carry)
  return carry['x_best'], carry['correct'], carry['loss_best'], carry['x_best_adv'], carry['zero_grad']


def target_rank(run, *, num_classes: int, n_restarts: int) -> int:
  """The column of the ascending argsort of the clean logits that run `run` of APGD-T targets."""
  return num_classes - (2 + run // n_restarts)


def apgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, keys: Optional[jax.Array] = None, *,
         norm: str = 'Linf', eps: float, loss: str = 'ce', n_iter: int = 100, n_restarts: int = 1,
         n_target_classes: int = 9, rho: float = 0.75, noise: Optional[jax.Array] = None) -> Dict[str, jax.Array]:
  """APGD as AutoAttack's `perturb`: several runs, each on the points not yet fooled.

  Args:
    logits_fn: x [B, H, W, C] -> logits [B, K]; a pure function (BatchNorm in eval mode).
    x: [B, H, W, C] float32 in [0, 1]; y: [B] int labels.
    keys: [B] PRNG keys, one per point (random starts); not needed when `noise` is given.
    loss: 'ce' or 'dlr' (untargeted, `n_restarts` runs) or 'dlr-targeted' (APGD-T: for targets
      j = 2..n_target_classes+1, the j-th largest clean logit, `n_restarts` runs each).
    noise: optional [runs, B, H, W, C] start noise instead of draws from `keys` (U[-1, 1] for Linf,
      N(0, 1) for L2), to replay the official code's random numbers in tests.

  Returns:
    x_adv: the first successful run's adversarial where fooled, the clean image elsewhere.
    fooled: [B] clean-correct points misclassified by some run (by the attack's own forward passes).
    first_run: [B] int32 index of the run that fooled the point, -1 where none.
    zero_gradient_points: int, points with an all-zero gradient at some run's start (DLR losses only).
  """
  if norm not in NORMS:
    raise ValueError(f'norm={norm!r}; allowed: {", ".join(NORMS)}')
  if loss not in losses.LOSSES:
    raise ValueError(f'loss={loss!r}; allowed: {", ".join(losses.LOSSES)}')
  targeted = loss == 'dlr-targeted'
  runs = n_restarts * (n_target_classes if targeted else 1)
  if noise is None and keys is None:
    raise ValueError('apgd needs `keys` (one per point) or `noise`')
  x = jnp.asarray(x, jnp.float32)
  clean_logits = logits_fn(x)
  num_classes = clean_logits.shape[1]
  if targeted and num_classes < n_target_classes + 1:
    raise ValueError(f'n_target_classes={n_target_classes} needs at least {n_target_classes + 1} classes, '
                     f'the model has {num_classes}')
  robust = jnp.argmax(clean_logits, axis=1) == y
  ranked = jnp.argsort(clean_logits, axis=1)  # Ascending: the j-th largest logit is ranked[:, -j].

  def one_run(run, carry):
    robust, x_adv, first_run, zero_grads = carry
    start_noise = (noise[run] if noise is not None else
                   draw_noise(jax.vmap(lambda k: jax.random.fold_in(k, run))(keys), x.shape[1:], norm=norm))
    targets = None
    if targeted:
      rank = target_rank(run, num_classes=num_classes, n_restarts=n_restarts)
      targets = jax.lax.dynamic_index_in_dim(ranked, rank, axis=1, keepdims=False)
    _, correct, _, x_found, zero_grad = single_run(
        logits_fn, x, y, targets, start_point(x, start_noise, norm=norm, eps=eps), norm=norm, eps=eps,
        loss=loss, n_iter=n_iter, rho=rho)
    fooled_now = robust & ~correct
    zero_grads = jnp.maximum(zero_grads, jnp.sum(zero_grad & robust))
    return (robust & correct, _where(fooled_now, x_found, x_adv), jnp.where(fooled_now, run, first_run),
            zero_grads)

  carry = (robust, x, jnp.full(y.shape, -1, jnp.int32), jnp.zeros((), jnp.int32))
  still_robust, x_adv, first_run, zero_grads = jax.lax.fori_loop(0, runs, one_run, carry)
  fooled = (jnp.argmax(clean_logits, axis=1) == y) & ~still_robust
  return {'x_adv': x_adv, 'fooled': fooled, 'first_run': first_run,
          'zero_gradient_points': zero_grads if loss != 'ce' else jnp.zeros((), jnp.int32)}
