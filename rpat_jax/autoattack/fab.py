"""FAB-T, the targeted Fast Adaptive Boundary attack of AutoAttack (Croce & Hein, 2020), in JAX, and
untargeted FAB (`fab_untargeted`, AutoAttack's plus version; see its docstring). Both share one step
function (`_fab_run`) and one accepting loop over runs (`_accepting_scan`).

Semantics are those of the official `pyautoattack` 0.2.0 `FABAttack_PT(targeted=True, n_restarts=1)`
used by AutoAttack's standard version (docs/autoattack.md, section 3):
- For targets j = 2..n_target_classes + 1 in order, the points still robust (clean-correct and not yet
  fooled within eps) attack the j-th largest *clean* logit. There is no random start and no noise.
- Each of the n_iter steps linearises f = z_t - z_y at the iterate x1, projects both x1 and the clean
  x0 onto {f_lin = 0} intersected with the image box, mixes the two steps with alpha <= alpha_max,
  overshoots by eta and clips. Success is *untargeted* (argmax != y). The smallest-norm adversarial
  iterate is kept, and every adversarial iterate is pulled back towards x0 by beta.
- After a target run, a fresh forward pass accepts a point iff argmax != y and ||adv - x|| <= eps.

Everything is per point: fixed shapes with masks, one `lax.fori_loop` for the steps and one
`lax.scan` over the targets, so the attack compiles once and makes no host round trip. Points that
are no longer robust still flow through later runs (fixed shapes) but their results are discarded.
This form is the reference the tests check; the ensemble runs the same step (`fab_step`, split into
the linearisation and `fab_move`) from the host on the points still robust (`compacted.make_fab`).
Images are NHWC float32 in [0, 1]; norms are in the same units (eps = 8/255, not 8).
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from rpat_jax.autoattack.apgd import draw_noise

LogitsFn = Callable[[jax.Array], jax.Array]
_NORM_FLOOR = 1e-8  # Official floor on the step norms before alpha = a1 / (a1 + a2).
_L2_TINY_WEIGHT = 1e-8  # The official L2 projection leaves coordinates with |w| <= 1e-8 unchanged.


def _orient(t: jax.Array, w: jax.Array, b: jax.Array):
  """Flips each hyperplane so that t lies on its non-negative side (as the official code does).

  Returns float32 (t, w, c) with c = <w, t> - b >= 0: the step d must lower <w, t + d> by exactly c.
  """
  t, w, b = (jnp.asarray(a, jnp.float32) for a in (t, w, b))
  c = jnp.sum(w * t, axis=1) - b
  sign = jnp.where(c >= 0, 1.0, -1.0)
  return t, w * sign[:, None], c * sign


def _solve_breakpoints(breakpoints: jax.Array, weights: jax.Array, target: jax.Array) -> jax.Array:
  """The s >= 0 with phi(s) = sum_i weights_i * min(s, breakpoints_i) = target, per row.

  breakpoints, weights: [N, D], both >= 0; target: [N] >= 0. phi is piecewise linear and
  non-decreasing. Bisection over the bit patterns of non-negative float32 (ordered as int32) brackets
  the solution between two adjacent floats in 31 steps, so no breakpoint lies strictly inside the
  bracket: phi is linear there, with the coordinates at or below it saturated, and one division gives
  s. This needs no sort (XLA's row sort was ~25x slower on CPU) and is exact up to rounding.
  Returns inf where target >= phi(inf) (no s reaches it; every coordinate then saturates).
  """
  weighted = weights > 0
  top = jnp.max(jnp.where(weighted, breakpoints, 0.0), axis=1)  # phi is flat beyond.
  phi = lambda s: jnp.sum(weights * jnp.minimum(s[:, None], breakpoints), axis=1)

  def halve(_, bracket):
    low, high = bracket  # phi(low) <= target < phi(high), as int32 bit patterns.
    middle = low + (high - low) // 2
    below = phi(lax.bitcast_convert_type(middle, jnp.float32)) <= target
    return jnp.where(below, middle, low), jnp.where(below, high, middle)

  bracket = (jnp.zeros_like(target, jnp.int32), lax.bitcast_convert_type(top, jnp.int32))
  low, _ = lax.fori_loop(0, 31, halve, bracket)
  saturated = breakpoints <= lax.bitcast_convert_type(low, jnp.float32)[:, None]
  slope = jnp.sum(jnp.where(saturated, 0.0, weights), axis=1)
  offset = jnp.sum(jnp.where(saturated, weights * breakpoints, 0.0), axis=1)
  s = jnp.maximum((target - offset) / jnp.where(slope > 0, slope, 1.0), 0.0)
  return jnp.where(target < phi(top), s, jnp.inf)


def project_linf(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The d of least Linf norm with <w, t + d> = b and t + d in [0, 1]^D, per row.

  t, w: [B, D] float32 (t in [0, 1]); b: [B]. Returns d [B, D]. The optimum moves every coordinate
  against w's sign by min(delta, room to the box face), and coordinates with w == 0 not at all. If the
  plane is out of reach inside the box, every coordinate moves to its face: the box corner closest to
  the plane (as the official `projection_linf`).
  """
  t, w, c = _orient(t, w, b)
  room = jnp.where(w > 0, t, 1.0 - t)  # Distance to the face that lowers <w, .>.
  delta = _solve_breakpoints(room, jnp.abs(w), c)
  return -jnp.sign(w) * jnp.minimum(delta[:, None], room)


def project_l2(t: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The d of least L2 norm with <w, t + d> = b and t + d in [0, 1]^D, per row.

  t, w: [B, D] float32 (t in [0, 1]); b: [B]. Returns d [B, D]. By KKT, d = clip(-lam * w) to the box
  for one lam >= 0; coordinate i saturates at lam = room_i / |w_i|. Coordinates with |w| <= 1e-8 stay
  at 0 (official threshold); an unreachable plane gives the closest box corner, as `projection_l2`.
  """
  t, w, c = _orient(t, w, b)
  active = jnp.abs(w) > _L2_TINY_WEIGHT
  magnitude = jnp.where(active, jnp.abs(w), 1.0)
  room = jnp.where(w > 0, t, 1.0 - t)
  saturation = jnp.where(active, room / magnitude, 0.0)  # Inactive: weight 0, so the key is moot.
  lam = _solve_breakpoints(saturation, jnp.where(active, w * w, 0.0), c)
  step = jnp.minimum(lam[:, None] * magnitude, room)
  return jnp.where(active, -jnp.sign(w) * step, 0.0)


def _linf_norm(v: jax.Array) -> jax.Array:
  return jnp.max(jnp.abs(v), axis=1)


def _l2_norm(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(v * v, axis=1))


THREATS = {'Linf': (project_linf, _linf_norm), 'L2': (project_l2, _l2_norm)}


def _flat_problem(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, norm: str):
  """(project, norm_of, x, y, x0 [B, D], flat_logits_fn): the shared set-up of both FAB variants, which
  work on flattened images."""
  if norm not in THREATS:
    raise ValueError(f'norm={norm!r}; allowed: {", ".join(THREATS)}')
  project, norm_of = THREATS[norm]
  x = lax.stop_gradient(x.astype(jnp.float32))
  flat_logits_fn = lambda v: logits_fn(v.reshape(x.shape))
  return project, norm_of, x, y.astype(jnp.int32), x.reshape(x.shape[0], -1), flat_logits_fn


def fab_step(logits_fn, linearise, x0, y, state, *, project, norm_of, alpha_max, eta, beta):
  """One step of `_fab_run` on state (x1, adv, best): one linearisation and one forward pass per point."""
  f, grad = linearise(state[0])
  return fab_move(logits_fn, x0, y, state, f, grad, project=project, norm_of=norm_of, alpha_max=alpha_max,
                  eta=eta, beta=beta)


def fab_move(logits_fn, x0, y, state, f, grad, *, project, norm_of, alpha_max, eta, beta):
  """The step after the linearisation (f, grad) at x1: the projections, the move and one forward pass."""
  x1, adv, best = state
  # f(x1) + <grad, v - x1> = 0 is the plane <grad, v> = b.
  b = jnp.sum(grad * x1, axis=1) - f
  d = project(jnp.concatenate([x1, x0]), jnp.concatenate([grad, grad]), jnp.concatenate([b, b]))
  d1, d2 = jnp.split(d, 2)
  a1, a2 = jnp.split(jnp.maximum(norm_of(d), _NORM_FLOOR), 2)
  # Weight of the step from x0: large when x1 is already far from the plane relative to x0.
  alpha = jnp.minimum(jnp.maximum(a1 / (a1 + a2), 0.0), alpha_max)[:, None]
  x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x0 + d2 * eta) * alpha, 0.0, 1.0)
  is_adv = jnp.argmax(logits_fn(x1), axis=1) != y
  dist = norm_of(x1 - x0)
  better = is_adv & (dist < best)
  adv = jnp.where(better[:, None], x1, adv)
  best = jnp.where(better, dist, best)
  # Backward step for every adversarial iterate, kept or not: it searches closer to x0.
  x1 = jnp.where(is_adv[:, None], x0 + (x1 - x0) * beta, x1)
  return x1, adv, best


def _fab_run(logits_fn, linearise, x0, x1, y, *, project, norm_of, n_iter, alpha_max, eta, beta):
  """One official `attack_single_run` on every row of x0 [B, D], starting from x1 [B, D].

  linearise(x1) -> (f [B], w [B, D]): the decision function whose zero set FAB steps onto and its
  gradient at x1 (targeted: z_t - z_y; untargeted: the closest linearised class). x1 is x0, or a
  random start (x0 stays the anchor of the mixing, the backward step and the norms).
  Returns (adv [B, D], best [B]): the smallest-norm adversarial iterate and its norm, inf (and adv = x0)
  where no iterate was adversarial.
  """
  step = lambda _, state: fab_step(logits_fn, linearise, x0, y, state, project=project, norm_of=norm_of,
                                   alpha_max=alpha_max, eta=eta, beta=beta)
  best = jnp.full(x0.shape[:1], jnp.inf, jnp.float32)
  _, adv, best = lax.fori_loop(0, n_iter, step, (x1, x0, best))
  return adv, best


def target_linearisation(logits_fn, y, target):
  """FAB-T's linearise towards target [B]: f = z_t - z_y and its gradient, one backward pass of the sum."""
  def margin(v):
    logits = logits_fn(v).astype(jnp.float32)
    pick = lambda k: jnp.take_along_axis(logits, k[:, None], axis=1)[:, 0]
    f = pick(target) - pick(y)
    return jnp.sum(f), f  # The sum's gradient is each point's own gradient.

  margin_grad = jax.grad(margin, has_aux=True)

  def linearise(x1):
    grad, f = margin_grad(x1)
    return f, grad

  return linearise


def _target_run(logits_fn, x0, y, target, **step_options):
  """FAB-T's run towards target [B] from x0."""
  return _fab_run(logits_fn, target_linearisation(logits_fn, y, target), x0, x0, y, **step_options)


def closest_class_linearisation(logits_fn, y, dual_norm_of):
  """Untargeted FAB's linearise (official `get_diff_logits_grads_batch` and the class choice).

  The full Jacobian [K, B, D] comes from one VJP vmapped over the K one-hot cotangents (the official
  code makes K backward passes). Per point it picks the class k with the smallest linearised distance
  |z_k - z_y| / (1e-12 + ||grad (z_k - z_y)||_q), q the dual norm; the true class gets the official
  df = 1e10 with a zero gradient (distance 1e22), so it is never picked while another class is finite.
  """
  def linearise(x1):
    logits, vjp = jax.vjp(lambda v: logits_fn(v).astype(jnp.float32), x1)
    batch, classes = logits.shape
    one_hots = jnp.broadcast_to(jnp.eye(classes, dtype=jnp.float32)[:, None, :], (classes, batch, classes))
    jacobian = jnp.swapaxes(jax.vmap(lambda e: vjp(e)[0])(one_hots), 0, 1)  # [B, K, D]
    true = (jnp.arange(classes)[None, :] == y[:, None])
    df = logits - jnp.take_along_axis(logits, y[:, None], axis=1)
    dg = jacobian - jnp.take_along_axis(jacobian, y[:, None, None], axis=1)
    df = jnp.where(true, 1e10, df)
    dist = jnp.abs(df) / (1e-12 + dual_norm_of(dg))
    k = jnp.argmin(dist, axis=1)
    f = jnp.take_along_axis(df, k[:, None], axis=1)[:, 0]
    w = jnp.take_along_axis(dg, k[:, None, None], axis=1)[:, 0]
    return f, w

  return linearise


def _accepting_scan(run, flat_logits_fn, x0, y, correct, eps, norm_of, indices, inputs, none_index):
  """Runs `run(input) -> (adv, best)` for each input in order on the points still robust.

  After each run a fresh forward pass accepts a point iff argmax != y and ||adv - x0|| <= eps (as the
  official `perturb`); accepted points leave the robust set. Returns (robust [B], x_adv [B, D],
  first [B] (the index of the accepting run, none_index if none), norms [runs, B] (inf where the run
  found nothing or was not made for the point)).
  """
  batch = x0.shape[0]
  nothing = (x0, jnp.full((batch,), jnp.inf, jnp.float32))

  def one_run(carry, scanned):
    robust, x_adv, first = carry
    index, run_input = scanned
    # Skipping a run with no robust point left changes no result, only saves compute.
    adv, best = lax.cond(jnp.any(robust), run, lambda _: nothing, run_input)
    best = jnp.where(robust, best, jnp.inf)
    candidate = jnp.where(jnp.isfinite(best)[:, None], adv, x0)
    # <= eps is inclusive.
    fooled = (robust & (jnp.argmax(flat_logits_fn(candidate), axis=1) != y)
              & (norm_of(candidate - x0) <= eps))
    x_adv = jnp.where(fooled[:, None], candidate, x_adv)
    first = jnp.where(fooled, index, first)
    return (robust & ~fooled, x_adv, first), best

  init = (correct, x0, jnp.full((batch,), none_index, jnp.int32))
  (robust, x_adv, first), norms = lax.scan(one_run, init, (indices, inputs))
  return robust, x_adv, first, norms


def fab_targeted(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, norm: str = 'Linf', eps: float,
                 n_iter: int = 100, n_target_classes: int = 9, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9) -> dict:
  """AutoAttack's FAB-T (standard version) on a batch.

  Args:
    logits_fn: x [B, H, W, C] float32 in [0, 1] -> logits [B, K], K >= n_target_classes + 1.
    x: clean images [B, H, W, C] in [0, 1]; y: [B] int labels.
    norm: 'Linf' or 'L2'; eps: radius (float32 comparison; may be traced), used only to accept.
    n_iter, n_target_classes, alpha_max, eta, beta: the official hyperparameters (static).

  Returns a dict of
    x_adv [B, H, W, C]: the accepted adversarial where fooled, the clean image elsewhere.
    fooled [B] bool: clean-correct and fooled within eps (clean-misclassified points are False).
    best_norm [B] float32: the smallest norm found over the target runs made for the point, or inf.
    first_target [B] int32: the j (2..n_target_classes + 1) whose run fooled the point, 0 if none.
    target_norms [n_target_classes, B] float32: each run's best norm (inf where none or not run).
  """
  project, norm_of, x, y, x0, flat_logits_fn = _flat_problem(logits_fn, x, y, norm)
  clean_logits = logits_fn(x).astype(jnp.float32)
  if clean_logits.shape[1] < n_target_classes + 1:
    raise ValueError(f'{clean_logits.shape[1]} classes cannot give {n_target_classes} targets')
  correct = jnp.argmax(clean_logits, axis=1) == y
  # Column j - 2 holds the j-th largest clean logit's class, j = 2..n_target_classes + 1.
  targets = lax.top_k(clean_logits, n_target_classes + 1)[1][:, 1:].astype(jnp.int32)
  run = lambda target: _target_run(flat_logits_fn, x0, y, target, project=project, norm_of=norm_of,
                                   n_iter=n_iter, alpha_max=alpha_max, eta=eta, beta=beta)
  j = jnp.arange(2, n_target_classes + 2, dtype=jnp.int32)
  robust, x_adv, first_target, target_norms = _accepting_scan(
      run, flat_logits_fn, x0, y, correct, eps, norm_of, j, targets.T, none_index=0)
  return {
      'x_adv': x_adv.reshape(x.shape),
      'fooled': correct & ~robust,
      'best_norm': jnp.min(target_norms, axis=0),
      'first_target': first_target,
      'target_norms': target_norms,
  }


# Dual norms over the last axis (the linearised distance |f| / ||grad f||_q of untargeted FAB).
DUAL_NORMS = {'Linf': lambda g: jnp.sum(jnp.abs(g), axis=-1),
               'L2': lambda g: jnp.sqrt(jnp.sum(g * g, axis=-1))}


def random_start(x0: jax.Array, noise: jax.Array, norm_of, eps) -> jax.Array:
  """The official FAB random start: clip(x0 + min(res, eps) * t / ||t|| * 0.5) with res = 1e10 at the
  start of a run, i.e. radius eps / 2 (before clipping). t is U[-1, 1] for Linf, N(0, I) for L2.
  The operations follow the official order, (eps * t) / ||t|| * 0.5, for bit-level agreement."""
  return jnp.clip(x0 + eps * noise / norm_of(noise)[:, None] * 0.5, 0.0, 1.0)


def fab_untargeted(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, keys: Optional[jax.Array] = None, *,
                   norm: str = 'Linf', eps: float, n_iter: int = 100, n_restarts: int = 5,
                   alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                   noise: Optional[jax.Array] = None) -> dict:
  """Untargeted FAB as AutoAttack's plus version runs it (`FABAttack_PT(targeted=False)`).

  Restart 0 starts at the clean point; restarts r >= 1 start at a random point of radius eps / 2
  around it (official `use_rand_start = counter > 0`). Each restart runs only on the points still
  robust (clean-correct, not yet accepted), and a point is accepted iff argmax != y and
  ||adv - x|| <= eps. Each step linearises the class with the smallest linearised distance to the
  decision boundary at the current iterate (the full Jacobian: K backward passes, one compiled vmap).

  Args:
    logits_fn: x [B, H, W, C] float32 in [0, 1] -> logits [B, K].
    x: clean images [B, H, W, C] in [0, 1]; y: [B] int labels.
    keys: [B] PRNG keys, one per point; restart r >= 1 draws its start noise from fold_in(key, r)
      (so a point's result does not depend on the batch). Not needed with `noise` or n_restarts = 1.
    norm: 'Linf' or 'L2'; eps: radius (float32; may be traced): accepts results, sizes random starts.
    n_iter, n_restarts, alpha_max, eta, beta: the official hyperparameters (static).
    noise: optional [n_restarts, B, H, W, C] start noise t instead of draws from `keys` (U[-1, 1] for
      Linf, N(0, I) for L2; row 0 is unused), e.g. the official random numbers replayed.

  Returns a dict of
    x_adv [B, H, W, C]: the accepted adversarial where fooled, the clean image elsewhere.
    fooled [B] bool: clean-correct and fooled within eps (clean-misclassified points are False).
    best_norm [B] float32: the smallest norm found over the restarts made for the point, or inf.
    first_restart [B] int32: the restart (0-based) that fooled the point, -1 if none.
    restart_norms [n_restarts, B] float32: each restart's best norm (inf where none or not run).
  """
  if n_restarts > 1 and keys is None and noise is None:
    raise ValueError('fab_untargeted with n_restarts > 1 needs `keys` (one per point) or `noise`')
  project, norm_of, x, y, x0, flat_logits_fn = _flat_problem(logits_fn, x, y, norm)
  batch = x.shape[0]
  correct = jnp.argmax(logits_fn(x), axis=1) == y
  linearise = closest_class_linearisation(flat_logits_fn, y, DUAL_NORMS[norm])
  eps32 = jnp.asarray(eps, jnp.float32)

  def start(restart):
    if noise is not None:
      t = jnp.asarray(noise, jnp.float32)[restart].reshape(batch, -1)
    elif keys is not None:
      t = draw_noise(jax.vmap(lambda k: jax.random.fold_in(k, restart))(keys), x0.shape[1:], norm=norm)
    else:  # n_restarts == 1: only restart 0 runs, and it starts at x0.
      return x0
    return jnp.where(restart > 0, random_start(x0, t, norm_of, eps32), x0)

  run = lambda restart: _fab_run(flat_logits_fn, linearise, x0, start(restart), y, project=project,
                                 norm_of=norm_of, n_iter=n_iter, alpha_max=alpha_max, eta=eta,
                                 beta=beta)
  restarts = jnp.arange(n_restarts, dtype=jnp.int32)
  robust, x_adv, first_restart, restart_norms = _accepting_scan(
      run, flat_logits_fn, x0, y, correct, eps32, norm_of, restarts, restarts, none_index=-1)
  return {
      'x_adv': x_adv.reshape(x.shape),
      'fooled': correct & ~robust,
      'best_norm': jnp.min(restart_norms, axis=0),
      'first_restart': first_restart,
      'restart_norms': restart_norms,
  }
