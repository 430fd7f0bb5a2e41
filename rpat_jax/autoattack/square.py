"""Square Attack (Andriushchenko et al., 2020) as AutoAttack runs it: `square_attack`, one jitted JAX
function, and its pieces (`square_start`, `square_step`), which the ensemble runs in blocks of queries
from the host on the points still active (`compacted.make_square`).

A score-based attack: it only queries `logits_fn`, never a gradient, so it catches gradient
masking that the white-box attacks of the ensemble miss. Semantics follow the official
`SquareAttack` (pyautoattack 0.2.0, square.py; docs/autoattack.md, section 4) with AutoAttack's settings (margin
loss, one restart, resc_schedule=False):
- margin m(x) = z_y - max_{j != y} z_j, minimised; a point is active while its best margin is > 0;
  one query per active point per iteration (plus one for the start point);
- a candidate is accepted where m_new < m_best (strict) or m_new <= 0;
- window side s(i) from the absolute schedule of `p_selection`; its top-left corner is
  floor((H - s) * U), U ~ U[0, 1), so no window ever covers the last row or column (an official
  quirk we keep);
- Linf: start from vertical stripes (one sign per image, column and channel); each iteration moves
  one window to the opposite face of the eps-box with one sign per channel;
- L2: start from a 5x5 tiling of the pattern eta (random sign per tile and channel, random
  transpose per tile); each iteration writes eta plus the old content into window 1, zeros window 2
  and rescales so the whole perturbation keeps norm eps, then clips to [0, 1];
- points the model misclassifies when clean are not attacked; "fooled" is decided by a fresh forward
  pass on the returned image, as `perturb` does.

One deliberate difference: the official code draws one window position, one transpose coin and one
set of channel signs per iteration, shared by every image of the chunk (and its start-point noise is
shaped like the chunk). We draw everything per point from that point's key, so a point's trajectory
does not depend on which other points share its batch, the batch size or the device count. Each
point's distribution is the same; agreement with the official code is statistical (see the test).

Randomness per point: `start_key, loop_key = split(key)`; the start draws
`start_noise(start_key)`, iteration i draws `iteration_noise(fold_in(loop_key, i))`. The draws are
explicit dicts so that a test can replay them through the official code (for a single point, its
shared draws are per-point draws).
Images are NHWC float32 in [0, 1]; eps is a fraction of that range (8/255, not 8).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from rpat_jax.autoattack.losses import margin  # z_y - max_{j != y} z_j; <= 0 counts as fooled.

LogitsFn = Callable[[jax.Array], jax.Array]
NORMS = ('Linf', 'L2')
# Iterations after which p halves. AutoAttack's resc_schedule=False makes them absolute numbers.
P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_TINY = 1e-12  # The official floor in every L2 normalisation.


def p_selection(p_init: float, iteration: jax.Array, n_queries: int) -> jax.Array:
  """Fraction of the image a window covers at 0-based `iteration`: p_init halved per threshold.

  Elementwise over `iteration` (int, any shape); returns float32. `n_queries` only enters the
  rescaled schedule (resc_schedule=True), which AutoAttack does not use; it is kept for parity with
  the official signature.
  """
  del n_queries
  iteration = jnp.asarray(iteration)
  halvings = sum((iteration > threshold).astype(jnp.int32) for threshold in P_THRESHOLDS)
  return jnp.float32(p_init) / jnp.exp2(halvings.astype(jnp.float32))


def side_length(p: jax.Array, height: int, width: int, norm: str) -> jax.Array:
  """Window side (int32) for fraction p: round(sqrt(p * H * W)), at least 1 (Linf) or an odd
  number at least 3 (L2, so the pattern eta has a centre), at most min(H, W). Rounds half to even,
  as Python does; computed in float32 (the official in float64), which agrees on every size tested.
  """
  side = jnp.round(jnp.sqrt(jnp.asarray(p, jnp.float32) * (height * width))).astype(jnp.int32)
  if norm == 'Linf':
    side = jnp.maximum(side, 1)
  elif norm == 'L2':
    side = jnp.maximum(side, 3)
    side = side + (side % 2 == 0)
  else:
    raise ValueError(f'norm={norm!r}; allowed: {NORMS}')
  return jnp.minimum(side, min(height, width))


def window_corner(uniform: jax.Array, side: jax.Array, extent: int) -> jax.Array:
  """Window start (int32) along an axis of `extent` pixels from U in [0, 1): floor((extent - side)
  * U), as the official sampler; the last position, extent - side, is never drawn (unless 0)."""
  return jnp.floor((extent - side) * uniform).astype(jnp.int32)


def window_mask(top: jax.Array, left: jax.Array, side: jax.Array, height: int,
                width: int) -> jax.Array:
  """[H, W] bool, True on rows [top, top + side) and columns [left, left + side): a dynamic window
  as a mask, because its size changes with the iteration and jit needs static shapes."""
  rows = jnp.arange(height)[:, None]
  columns = jnp.arange(width)[None, :]
  return (rows >= top) & (rows < top + side) & (columns >= left) & (columns < left + side)


def eta_pattern(side: jax.Array, size: int) -> jax.Array:
  """[size, size] float32: the official L2 pattern eta_side on [0, side)^2, zero elsewhere.

  Rows [0, side // 2) hold a bump on a (side // 2) x side rectangle, the other rows minus a bump
  on a (side - side // 2) x side rectangle; each bump and then the whole is scaled to unit L2 norm.
  A bump adds 1 / (k + 1)^2 on the (2k + 1)-square around the rectangle's centre (rows // 2,
  side // 2) for k = 0..side // 2, so a cell at Chebyshev distance d from the centre holds
  sum_{k=d}^{side//2} 1 / (k + 1)^2. Written with masks so that `side` may be traced.
  """
  rows = jnp.arange(size)[:, None]
  columns = jnp.arange(size)[None, :]
  half = side // 2
  upper = rows < half
  local_rows = jnp.where(upper, rows, rows - half)
  rectangle_rows = jnp.where(upper, half, side - half)
  distance = jnp.maximum(jnp.abs(local_rows - rectangle_rows // 2), jnp.abs(columns - half))
  radii = jnp.arange(size // 2 + 1)
  weights = jnp.where((radii >= distance[..., None]) & (radii <= half), 1.0 / (radii + 1.0)**2, 0.0)
  bump = jnp.where((rows < side) & (columns < side), weights.sum(-1), 0.0).astype(jnp.float32)

  def unit(v):  # An empty half (side 1) stays zero instead of 0 / 0.
    norm = jnp.sqrt(jnp.sum(v**2))
    return v / jnp.where(norm > 0, norm, 1.0)

  return unit(unit(jnp.where(upper, bump, 0.0)) - unit(jnp.where(upper, 0.0, bump)))


def _l2_norm(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(v**2))


def _channel_norm(v: jax.Array) -> jax.Array:
  """[C]: L2 norm of each channel of one [H, W, C] image."""
  return jnp.sqrt(jnp.sum(v**2, axis=(0, 1)))


def _l2_tiling(height: int, width: int):
  """(tile side, offset, tile rows, tile columns) of the official L2 start: side H // 5 from
  offset (H - 5 side) // 2 on both axes, H // side by W // side tiles. Tiles past the image edge
  (H = 8: 8 tiles from offset 1) are dropped, as torch's slicing drops them; tiles cut by the edge
  (12x12), where the official code raises, are cropped."""
  tile = height // 5
  if tile == 0:
    raise ValueError(f'image {height}x{width}: the official L2 start needs H >= 5')
  return tile, (height - 5 * tile) // 2, height // tile, width // tile


def _signs(uniform: jax.Array) -> jax.Array:
  return jnp.where(uniform < 0.5, -1.0, 1.0).astype(jnp.float32)


# Each point draws one flat uniform vector per start and per iteration: one threefry call each,
# which keeps the compiled program small (a key per purpose, or a multi-dimensional draw, made the
# CPU compile time 2x longer).
def start_noise(key: jax.Array, image_shape, norm: str) -> dict:
  """The random draws of one point's start, for an image of shape (H, W, C).

  Linf: 'signs' [W, C] (one per column and channel). L2: per start tile, 'transpose' [rows, columns]
  bool and 'signs' [rows, columns, C].
  """
  height, width, channels = image_shape
  if norm == 'Linf':
    return {'signs': _signs(jax.random.uniform(key, (width * channels,)).reshape(width, channels))}
  _, _, rows, columns = _l2_tiling(height, width)
  uniform = jax.random.uniform(key, (rows * columns * (channels + 1),))
  uniform = uniform.reshape(rows, columns, channels + 1)
  return {'transpose': uniform[..., 0] < 0.5, 'signs': _signs(uniform[..., 1:])}


def iteration_noise(key: jax.Array, side: jax.Array, image_shape, norm: str) -> dict:
  """The random draws of one iteration for one point: window corner 'top', 'left' and one sign per
  channel 'signs' [C]; for L2 also the second window's 'top_2', 'left_2' and the eta 'transpose'."""
  height, width, channels = image_shape
  uniform = jax.random.uniform(key, (channels + 5,))
  noise = {'top': window_corner(uniform[0], side, height),
           'left': window_corner(uniform[1], side, width), 'signs': _signs(uniform[5:])}
  if norm == 'L2':
    noise['top_2'] = window_corner(uniform[2], side, height)
    noise['left_2'] = window_corner(uniform[3], side, width)
    noise['transpose'] = uniform[4] < 0.5
  return noise


def linf_start(x: jax.Array, noise: dict, eps: float) -> jax.Array:
  """One image x [H, W, C] -> clip(x + eps * signs): vertical stripes, constant down H."""
  return jnp.clip(x + eps * noise['signs'][None], 0.0, 1.0)


def l2_start(x: jax.Array, noise: dict, eps: float) -> jax.Array:
  """One image x [H, W, C] -> clip(x + eps * delta / |delta|_2), delta tiled with sign * eta (or its
  transpose) per tile and channel; the border outside the tiles stays 0."""
  height, width, channels = x.shape
  tile, offset, rows, columns = _l2_tiling(height, width)
  eta = eta_pattern(tile, tile)
  tiles = jnp.where(noise['transpose'][..., None, None], eta.T, eta)
  tiles = tiles[..., None] * noise['signs'][:, :, None, None, :]  # [rows, columns, tile, tile, C]
  block = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * tile, columns * tile, channels)
  # Negative high padding crops whatever lies past the edge.
  delta = jax.lax.pad(block, 0.0, ((offset, height - offset - rows * tile, 0),
                                   (offset, width - offset - columns * tile, 0), (0, 0, 0)))
  return jnp.clip(x + delta / (_l2_norm(delta) + _TINY) * eps, 0.0, 1.0)


def linf_candidate(x: jax.Array, x_best: jax.Array, noise: dict, side: jax.Array,
                   eps: float) -> jax.Array:
  """One image: x_best with one window moved by 2 eps * (sign per channel), clipped to the eps-box
  around x and to [0, 1]; i.e. the window set to clip(x + eps * sign)."""
  height, width, _ = x.shape
  window = window_mask(noise['top'], noise['left'], side, height, width)[..., None]
  x_new = jnp.where(window, x_best + 2.0 * eps * noise['signs'], x_best)
  return jnp.clip(jnp.clip(x_new, x - eps, x + eps), 0.0, 1.0)


def l2_candidate(x: jax.Array, x_best: jax.Array, noise: dict, side: jax.Array, eps: float,
                 eta_square: jax.Array) -> jax.Array:
  """One image: the official two-window L2 update of delta = x_best - x, rescaled to norm eps and
  clipped. `eta_square` is eta_pattern(side, min(H, W)), computed once for the batch."""
  height, width, channels = x.shape
  top, left = noise['top'], noise['left']
  window = window_mask(top, left, side, height, width)[..., None]
  window_2 = window_mask(noise['top_2'], noise['left_2'], side, height, width)[..., None]

  # eta placed at the window's corner (transposed on heads): gather it in window coordinates.
  local_rows = jnp.arange(height)[:, None] - top
  local_columns = jnp.arange(width)[None, :] - left
  transpose = noise['transpose']
  local_rows, local_columns = (jnp.where(transpose, local_columns, local_rows),
                               jnp.where(transpose, local_rows, local_columns))
  last = eta_square.shape[0] - 1
  eta = eta_square[jnp.clip(local_rows, 0, last), jnp.clip(local_columns, 0, last)][..., None]

  delta = x_best - x
  old = jnp.where(window, delta, 0.0)
  new = jnp.where(window, eta * noise['signs'] + old / (_TINY + _channel_norm(old)), 0.0)
  # Per channel, the new window gets the norm the two windows had plus an equal share of whatever
  # the whole perturbation lacks to reach eps (clipping to [0, 1] may have shrunk it).
  spare = jnp.maximum(eps**2 - _l2_norm(delta)**2, 0.0) / channels
  in_windows = _channel_norm(jnp.where(window | window_2, delta, 0.0))
  new = new / (_TINY + _channel_norm(new)) * jnp.sqrt(spare + in_windows**2)
  delta = jnp.where(window, new, jnp.where(window_2, 0.0, delta))  # Overlaps go to window 1.
  return jnp.clip(x + delta / (_l2_norm(delta) + _TINY) * eps, 0.0, 1.0)


def split_keys(keys: jax.Array):
  """(start keys [B], loop keys [B]) of the points' keys [B]."""
  return tuple(jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0))


def square_start(logits_fn: LogitsFn, x, y, start_keys, clean_correct, clean_margin, *, norm: str, eps: float):
  """The state (iteration 0, x_best, margin_best, queries) at the start point: one forward pass per point.
  Clean-misclassified points keep x and their clean margin [B] and are never queried."""
  start_fn = linf_start if norm == 'Linf' else l2_start
  noise = jax.vmap(lambda k: start_noise(k, x.shape[1:], norm))(start_keys)
  start = jax.vmap(start_fn, in_axes=(0, 0, None))(x, noise, eps)
  x_best = jnp.where(clean_correct[:, None, None, None], start, x)
  margin_best = jnp.where(clean_correct, margin(logits_fn(x_best), y), clean_margin)
  return jnp.int32(0), x_best, margin_best, clean_correct.astype(jnp.int32)


def square_step(logits_fn: LogitsFn, x, y, loop_keys, clean_correct, state, *, norm: str, eps: float,
                n_queries: int, p_init: float):
  """One iteration on state (iteration, x_best, margin_best, queries): one forward pass per point; only
  active points (clean-correct, margin > 0) count the query and may move."""
  candidates = square_candidates(x, state[1], loop_keys, state[0], norm=norm, eps=eps, n_queries=n_queries,
                                 p_init=p_init)
  return square_accept(logits_fn, y, clean_correct, state, candidates)


def square_candidates(x, x_best, loop_keys, iteration, *, norm: str, eps: float, n_queries: int, p_init: float):
  """The candidate image of every point at `iteration` (no forward pass)."""
  _, height, width, _ = x.shape
  side = side_length(p_selection(p_init, iteration, n_queries), height, width, norm)
  noise = jax.vmap(lambda k: iteration_noise(jax.random.fold_in(k, iteration), side, x.shape[1:],
                                             norm))(loop_keys)
  if norm == 'Linf':
    candidate_fn = lambda a, b, n: linf_candidate(a, b, n, side, eps)
  else:
    eta_square = eta_pattern(side, min(height, width))
    candidate_fn = lambda a, b, n: l2_candidate(a, b, n, side, eps, eta_square)
  return jax.vmap(candidate_fn)(x, x_best, noise)


def square_accept(logits_fn: LogitsFn, y, clean_correct, state, candidates):
  """The state after querying the candidates: one forward pass per point."""
  iteration, x_best, margin_best, queries = state
  active = clean_correct & (margin_best > 0)
  margin_new = margin(logits_fn(candidates), y)
  accept = active & ((margin_new < margin_best) | (margin_new <= 0))
  x_best = jnp.where(accept[:, None, None, None], candidates, x_best)
  margin_best = jnp.where(accept, margin_new, margin_best)
  return iteration + 1, x_best, margin_best, queries + active.astype(jnp.int32)


def square_attack(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, keys: jax.Array, *,
                  norm: str = 'Linf', eps: float, n_queries: int = 5000,
                  p_init: float = 0.8) -> dict:
  """Untargeted Square Attack with the margin loss, one restart, AutoAttack's schedule.

  Args:
    logits_fn: x [B, H, W, C] -> logits [B, K] float32; pure, per-point (BN in eval mode).
    x: clean images [B, H, W, C] float32 in [0, 1].
    y: [B] int labels.
    keys: [B] per-point PRNG keys.
    norm: 'Linf' or 'L2'.
    eps: radius, a fraction of the [0, 1] range.
    n_queries: iterations (static); a point that survives them all used n_queries + 1 queries.
    p_init: initial fraction of the image a window covers.

  Returns a dict of:
    x_adv [B, H, W, C]: the attack's image where fooled, the clean image elsewhere (as `perturb`).
    x_best [B, H, W, C]: the lowest-margin image found, for every clean-correct point (clean image
      for clean-misclassified points).
    fooled [B] bool: clean-correct and argmax(logits_fn(x_best)) != y (a fresh forward pass).
    clean_correct [B] bool: the points that were attacked.
    margin [B] float32: best margin (the clean margin for clean-misclassified points).
    queries [B] int32: margin evaluations used (0 for clean-misclassified points).
  """
  if norm not in NORMS:
    raise ValueError(f'norm={norm!r}; allowed: {NORMS}')
  x = x.astype(jnp.float32)
  clean_logits = logits_fn(x)
  clean_correct = jnp.argmax(clean_logits, axis=-1) == y
  start_keys, loop_keys = split_keys(keys)
  state = square_start(logits_fn, x, y, start_keys, clean_correct, margin(clean_logits, y), norm=norm, eps=eps)

  def keep_going(state):
    iteration, _, margin_best, _ = state
    return (iteration < n_queries) & jnp.any(clean_correct & (margin_best > 0))

  step = lambda state: square_step(logits_fn, x, y, loop_keys, clean_correct, state, norm=norm, eps=eps,
                                   n_queries=n_queries, p_init=p_init)
  _, x_best, margin_best, queries = jax.lax.while_loop(keep_going, step, state)

  fooled = clean_correct & (jnp.argmax(logits_fn(x_best), axis=-1) != y)
  return {
      'x_adv': jnp.where(fooled[:, None, None, None], x_best, x),
      'x_best': x_best,
      'fooled': fooled,
      'clean_correct': clean_correct,
      'margin': margin_best,
      'queries': queries,
  }
