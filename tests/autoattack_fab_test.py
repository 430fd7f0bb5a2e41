"""FAB-T: exact projections, linear models with a known answer, and parity with the official code.

The official code is `pyautoattack` 0.2.0 (`fab_projections`, `fab_pt.FABAttack_PT` with
targeted=True, n_restarts=1, as AutoAttack's standard version); it runs on CPU on the same arrays.
FAB-T is deterministic, so each point's best norm per target can be compared, not only its flag.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aa_reference as ref
from rpat_jax.autoattack import fab

pytestmark = pytest.mark.xla_optimized  # Its time goes into running the attacks' loops.

torch = pytest.importorskip('torch')
official_projections = pytest.importorskip('pyautoattack.fab_projections')
fab_pt = pytest.importorskip('pyautoattack.fab_pt')
torch.set_num_threads(1)  # pytest -n 2 runs two workers on two cores.

_OURS = {'Linf': fab.project_linf, 'L2': fab.project_l2}
_THEIRS = {'Linf': official_projections.projection_linf, 'L2': official_projections.projection_l2}


def _norm(v, norm):
  v = np.asarray(v, np.float64).reshape(len(v), -1)
  return np.abs(v).max(1) if norm == 'Linf' else np.sqrt((v * v).sum(1))


def _reference_projection(t, w, b, norm):
  """float64, one row at a time: bisection on the multiplier of the KKT conditions (not a sort).

  Linf: d_i = -sign(w_i) min(s, room_i); L2: d_i = -sign(w_i) min(lam |w_i|, room_i) (|w_i| > 1e-8);
  room_i is the distance to the box face that lowers <w, .>. The closest corner where infeasible.
  """
  d = np.zeros(t.shape)
  for i, (ti, wi, bi) in enumerate(zip(*(np.asarray(a, np.float64) for a in (t, w, b)))):
    c = wi @ ti - bi
    wi = wi if c >= 0 else -wi
    c = abs(c)
    active = wi != 0 if norm == 'Linf' else np.abs(wi) > 1e-8
    room = np.where(wi > 0, ti, 1 - ti)
    rate = np.where(active, 1.0 if norm == 'Linf' else np.abs(wi), 1.0)  # Move per unit multiplier.
    move = lambda s: np.where(active, np.minimum(s * rate, room), 0.0)  # s = inf: the corner.
    reach = lambda s: np.abs(wi) @ move(s)
    low, high = 0.0, float(np.max(np.where(active, room / rate, 0.0)))
    if reach(high) <= c:
      low = np.inf
    else:
      for _ in range(200):
        low, high = ((low + high) / 2, high) if reach((low + high) / 2) <= c else (low, (low + high) / 2)
    d[i] = -np.sign(wi) * move(low)
  return d


def _random_hyperplanes(rows, dim, seed):
  """Points with coordinates at 0 and 1, sparse and tiny weights, planes near, far and through t."""
  rng = np.random.default_rng(seed)
  t = rng.uniform(size=(rows, dim))
  t[rng.uniform(size=t.shape) < 0.15] = 0.0
  t[rng.uniform(size=t.shape) < 0.15] = 1.0
  w = rng.normal(size=(rows, dim)) * rng.choice([1e-3, 1.0, 30.0], (rows, 1))
  w[rng.uniform(size=w.shape) < 0.3] = 0.0
  w[rng.uniform(size=w.shape) < 0.05] = 1e-9  # Below the L2 projection's threshold.
  scale = rng.choice([0.0, 1e-3, 0.03, 0.3, 1.0, 3.0], rows)  # 0: t on the plane; 3: unreachable.
  b = (w * t).sum(1) + rng.choice([-1, 1], rows) * scale * np.abs(w).sum(1) * rng.uniform(0.2, 1, rows)
  return t.astype(np.float32), w.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_projection_matches_float64_reference_and_official(norm):
  t, w, b = _random_hyperplanes(400, 300, seed=0)
  ours = np.asarray(jax.jit(_OURS[norm])(t, w, b))
  reference = _reference_projection(t, w, b, norm)
  theirs = _THEIRS[norm](*(torch.from_numpy(a) for a in (t, w, b))).numpy()
  np.testing.assert_allclose(ours, reference, atol=2e-6)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  assert ((t + ours >= -1e-6) & (t + ours <= 1 + 1e-6)).all()
  # The plane is reached wherever it can be; elsewhere the move is the closest corner.
  reachable = np.isclose((w * (t + reference)).sum(1), b, rtol=0, atol=1e-6 * np.abs(w).sum(1) + 1e-9)
  assert 40 < (~reachable).sum() < 200
  np.testing.assert_allclose((w * (t + ours)).sum(1)[reachable], b[reachable],
                             atol=1e-4 * np.abs(w).sum(1).max())


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_projection_is_optimal_against_a_generic_solver(norm):
  optimize = pytest.importorskip('scipy.optimize')
  t, w, b = _random_hyperplanes(60, 8, seed=1)
  w[np.abs(w) < 1e-6] = 0.0  # Keep the solver away from the 1e-8 threshold.
  ours = np.asarray(_OURS[norm](t, w, b), np.float64)
  checked = 0
  for ti, wi, bi, di in zip(*(a.astype(np.float64) for a in (t, w, b)), ours):
    bounds = list(zip(-ti, 1 - ti))
    if norm == 'Linf':  # min s subject to |d_i| <= s, <w, d> = b - <w, t>, d in the box.
      dim = len(ti)
      a_ub = np.block([[np.eye(dim), -np.ones((dim, 1))], [-np.eye(dim), -np.ones((dim, 1))]])
      result = optimize.linprog(np.r_[np.zeros(dim), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * dim),
                                A_eq=np.r_[wi, 0.0][None], b_eq=[bi - wi @ ti], bounds=bounds + [(0, None)])
      best = result.fun if result.status == 0 else None
    else:
      result = optimize.minimize(lambda d: d @ d, np.zeros_like(ti), jac=lambda d: 2 * d, bounds=bounds,
                                 constraints=[{'type': 'eq', 'fun': lambda d: wi @ (ti + d) - bi}],
                                 method='SLSQP', options={'ftol': 1e-14, 'maxiter': 500})
      best = np.sqrt(result.fun) if result.success and abs(wi @ (ti + result.x) - bi) < 1e-9 else None
    if best is not None and abs(wi @ (ti + di) - bi) < 1e-4 * np.abs(wi).sum() + 1e-7:
      checked += 1
      assert _norm(di[None], norm)[0] == pytest.approx(best, rel=1e-4, abs=1e-6)
  assert checked >= 30


# ---------------------------------------------------------------------------------------------------
# Linear models: the minimal adversarial distance is a projection, known in float64.

_LINEAR_SHAPE = (4, 4, 3)


def _linear_fab_factor(n_iter, alpha_max=0.1, eta=1.05, beta=0.9):
  """best_norm / minimal distance of FAB on a linear model when the box faces stay out of reach.

  Then x1 = x0 + s d* (d* the projection of x0), the projection of x1 is (1 - s) d*, and FAB is a
  scalar recursion in s: 1.05 after one step, 1.0052 from the second step on.
  """
  s, best = 0.0, np.inf
  for _ in range(n_iter):
    alpha = min(abs(1 - s) / (abs(1 - s) + 1), alpha_max)
    s = (s + eta * (1 - s)) * (1 - alpha) + eta * alpha
    if s > 1:  # Adversarial: keep the smallest, then step back towards x0.
      best, s = min(best, s), beta * s
  return best


def _two_boundary_problem(n=64, seed=0):
  """Logits x @ W + c with z_0 = 0; classes 1 and 2 read disjoint halves of the pixels; classes 3..9
  sit at -1000 (out of reach). Moving towards one boundary leaves the other logit unchanged, so the
  minimal adversarial distance towards class k is the projection of x onto {z_k = 0} in the box.
  Half the points have pixels at 0 and 1 (the box binds), the others sit in [0.3, 0.7]. Every eighth
  point is labelled 1: clean-misclassified, not attacked.
  """
  rng = np.random.default_rng(seed)
  dim = int(np.prod(_LINEAR_SHAPE))
  halves = np.arange(dim) % 2 == 0
  weight = np.zeros((dim, 10))
  weight[halves, 1], weight[~halves, 2] = rng.normal(size=(2, dim // 2)) * [[1.0], [3.0]]
  bias = -1000.0 - np.arange(10.0)
  bias[0] = 0.0
  bias[1] = -0.5 * weight[:, 1].sum() - 1.5
  bias[2] = -0.5 * weight[:, 2].sum() - 2.5
  x = rng.uniform(0.3, 0.7, (n, dim))
  faces = rng.uniform(size=(n, dim)) < 0.3
  faces[::2] = False
  x = np.where(faces, rng.integers(0, 2, (n, dim)), x)
  x, weight, bias = x.astype(np.float32), weight.astype(np.float32), bias.astype(np.float32)
  logits = x.astype(np.float64) @ weight + bias
  y = np.zeros(n, np.int32)
  y[::8] = 1
  distances = {}
  for norm in ('Linf', 'L2'):
    per_class = []
    for k in (1, 2):
      w = np.broadcast_to(weight[:, k], x.shape).astype(np.float64)
      plane = (w * x).sum(1) - logits[:, k]  # {v: <w, v> = plane} is {z_k = 0}.
      d = _reference_projection(x, w, plane, norm)
      reached = np.abs((w * (x + d)).sum(1) - plane) < 1e-9
      interior = (np.abs(1.06 * d) < np.where(d > 0, 1 - x, x)).all(1) | (d == 0).all(1)
      per_class.append((np.where(reached, _norm(d, norm), np.inf), interior))
    distances[norm] = per_class
  return x.reshape((n,) + _LINEAR_SHAPE), y, weight, bias, logits, distances


def _expected_run_norms(problem, norm, n_iter):
  """Bounds [2, B] on the best norm of the runs j = 2 and j = 3 (the larger of z_1, z_2 first).

  Away from the box faces FAB's best norm is exactly factor * distance; where the box binds it lies
  in [distance, 1.01 distance] (measured 1.0055 at most). inf where the boundary is out of reach.
  """
  _, _, _, _, logits, distances = problem
  factor = _linear_fab_factor(n_iter)
  first = logits[:, 1] > logits[:, 2]
  lower, upper = [], []
  (d1, interior1), (d2, interior2) = distances[norm]
  for towards_one in (first, ~first):
    d, interior = np.where(towards_one, d1, d2), np.where(towards_one, interior1, interior2)
    lower.append(d * np.where(interior, factor, 1.0))
    upper.append(d * np.where(interior, factor, 1.01))
  return np.array(lower), np.array(upper)


def _linear_jax(weight, bias):
  return lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(weight) + jnp.asarray(bias)


def _linear_torch(weight, bias):
  weight, bias = torch.from_numpy(weight), torch.from_numpy(bias)
  return lambda v: v.permute(0, 2, 3, 1).reshape(v.shape[0], -1) @ weight + bias  # NCHW -> NHWC order.


def _run_official(model, x, y, *, norm, eps, n_iter, n_target_classes=9):
  """The official FAB-T on NHWC numpy arrays. Returns (x_adv, fooled, first_target, target_norms),
  with each target run's best norm recorded from its output (clean where it found nothing)."""
  runs = []

  class Recording(fab_pt.FABAttack_PT):

    def attack_single_run(self, x, y=None, use_rand_start=False, is_targeted=False):
      adv = super().attack_single_run(x, y, use_rand_start, is_targeted)
      runs.append((self.target_class, x.numpy().copy(), adv.numpy().copy()))
      return adv

  attack = Recording(model, norm=norm, n_restarts=1, n_iter=n_iter, eps=eps, seed=0, verbose=False,
                     device='cpu', targeted=True, n_target_classes=n_target_classes)
  xt, yt = ref.to_torch(x, y.astype(np.int64))
  x_adv = attack.perturb(xt, yt).numpy()
  row_of = {row.tobytes(): i for i, row in enumerate(xt.numpy())}
  target_norms = np.full((n_target_classes, len(x)), np.inf)
  first_target = np.zeros(len(x), np.int32)
  for j, subset, adv in runs:
    rows = np.array([row_of[row.tobytes()] for row in subset])
    found = _norm(adv - subset, norm)
    target_norms[j - 2, rows] = np.where(found > 0, found, np.inf)
    kept = (x_adv[rows] == adv).all(axis=(1, 2, 3)) & (found > 0)
    first_target[rows[kept]] = j
  fooled = (x_adv != xt.numpy()).any(axis=(1, 2, 3))
  return ref.to_nhwc(torch.from_numpy(x_adv)), fooled, first_target, target_norms


def _check_outputs(out, x, y, norm, eps, logits_fn):
  """Shapes, the eps ball, the box, clean images where not fooled, and misclassification where fooled."""
  x_adv, fooled = np.asarray(out['x_adv']), np.asarray(out['fooled'])
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert (_norm(x_adv - x, norm) <= eps + 1e-6).all()
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  np.testing.assert_array_equal(x_adv[~fooled], x[~fooled])
  assert (np.asarray(logits_fn(jnp.asarray(x_adv))).argmax(1)[fooled] != y[fooled]).all()
  np.testing.assert_array_equal(fooled, np.asarray(out['first_target']) > 0)
  np.testing.assert_array_equal(np.asarray(out['best_norm']), np.asarray(out['target_norms']).min(0))


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_linear_model_known_distances_and_official(norm):
  n_iter = 10
  problem = _two_boundary_problem()
  x, y, weight, bias, logits, _ = problem
  lower, upper = _expected_run_norms(problem, norm, n_iter)
  correct = logits.argmax(1) == y
  # eps in the widest gap between the bounds of the middle third, so that no point is ambiguous.
  bounds = np.sort(np.concatenate([lower[:, correct], upper[:, correct]], axis=None))
  middle = bounds[len(bounds) // 3:2 * len(bounds) // 3]
  gap = np.argmax(middle[1:] / middle[:-1])
  eps = float(np.sqrt(middle[gap] * middle[gap + 1]))
  expected_first = np.select([~correct, upper[0] <= eps, upper[1] <= eps], [0, 2, 3], 0)
  assert all((expected_first == j).sum() >= 5 for j in (0, 2, 3))

  logits_fn = _linear_jax(weight, bias)
  attack = jax.jit(functools.partial(fab.fab_targeted, logits_fn, norm=norm, eps=eps, n_iter=n_iter))
  out = attack(jnp.asarray(x), jnp.asarray(y))
  _check_outputs(out, x, y, norm, eps, logits_fn)
  norms, first = np.asarray(out['target_norms'], np.float64), np.asarray(out['first_target'])
  np.testing.assert_array_equal(first, expected_first)
  for j, run in ((2, correct), (3, correct & (first != 2))):  # The runs made for each point.
    assert (norms[j - 2][run] >= lower[j - 2][run] * (1 - 1e-4)).all()
    assert (norms[j - 2][run] <= upper[j - 2][run] * (1 + 1e-4)).all()
    assert np.isinf(norms[j - 2][~run]).all()
  assert np.isinf(norms[2:]).all()  # z_3.. cannot move: their runs never find an adversarial.

  # The official code on the same model agrees point by point (targets 4.. cannot fool anyone).
  _, fooled, first_official, norms_official = _run_official(
      _linear_torch(weight, bias), x, y, norm=norm, eps=eps, n_iter=n_iter, n_target_classes=2)
  np.testing.assert_array_equal(np.asarray(out['fooled']), fooled)
  np.testing.assert_array_equal(first, first_official)
  np.testing.assert_allclose(norms[:2], norms_official, rtol=1e-4)


def test_acceptance_is_inclusive_at_eps_and_misclassified_points_are_left_alone():
  """A point whose best norm equals eps (in float32) is fooled; with eps one ulp less it is not."""
  x, y, weight, bias, logits, _ = _two_boundary_problem(n=16)
  logits_fn = _linear_jax(weight, bias)
  # eps may be traced as well as a Python float: one compilation for all the runs.
  attack = jax.jit(lambda labels, eps: fab.fab_targeted(logits_fn, jnp.asarray(x), labels, norm='L2',
                                                        eps=eps, n_iter=5, n_target_classes=1))
  run = lambda eps, labels=y: attack(jnp.asarray(labels), np.float32(eps))
  best = np.asarray(run(1e9)['best_norm'])
  point = int(np.argmin(np.where(np.isfinite(best), best, 9)))
  at = run(best[point])
  below = run(np.nextafter(best[point], np.float32(0)))
  assert bool(at['fooled'][point]) and not bool(below['fooled'][point])
  assert float(at['best_norm'][point]) == float(below['best_norm'][point]) == best[point]
  # All labels wrong: nothing is attacked (the target runs are skipped), nothing counts as fooled.
  out = run(1e9, (logits.argmax(1) + 1) % 10)
  assert not np.asarray(out['fooled']).any() and np.isinf(np.asarray(out['best_norm'])).all()
  np.testing.assert_array_equal(np.asarray(out['x_adv']), x)
  np.testing.assert_array_equal(np.asarray(out['first_target']), 0)


# ---------------------------------------------------------------------------------------------------
# The tiny network of aa_reference, in torch and in JAX: parity with the official FAB-T.


@pytest.mark.parametrize('norm,eps', [('Linf', 1.5 / 255), pytest.param('L2', 0.1, marks=pytest.mark.slow)])
def test_matches_official_on_tiny_network(norm, eps):
  """100 points, n_iter = 10 (the tiny network converges in fewer), all 9 targets.

  Measured: 100% flag agreement and equal robust accuracy (Linf 47%, L2 53%); >= 99% of the
  per-target best norms within rtol 1e-3 (median relative difference 3e-6). The rest differ by up to
  5e-3 because FAB iterates approach the boundary until fp32 rounding flips an is_adv decision; the
  same spread remains with torch's forward pass and the official projections inside our loop.
  """
  n, n_iter = 100, 10
  weights = ref.make_weights()
  x, y = ref.make_points(n, weights=weights)
  logits_fn = ref.jax_logits_fn(weights)
  x_adv_official, fooled_official, first_official, norms_official = _run_official(
      ref.torch_model(weights), x, y, norm=norm, eps=eps, n_iter=n_iter)
  attack = jax.jit(functools.partial(fab.fab_targeted, logits_fn, norm=norm, eps=eps, n_iter=n_iter))
  out = attack(jnp.asarray(x), jnp.asarray(y.astype(np.int32)))
  _check_outputs(out, x, y, norm, eps, logits_fn)
  assert (_norm(x_adv_official - x, norm) <= eps + 1e-6).all()
  fooled = np.asarray(out['fooled'])
  correct = np.asarray(logits_fn(jnp.asarray(x))).argmax(1) == y
  robust, robust_official = (correct & ~fooled).mean(), (correct & ~fooled_official).mean()
  assert 0.3 <= robust_official <= 0.7  # A mid-range eps: both outcomes are common.
  assert np.mean(fooled == fooled_official) >= 0.95 and abs(robust - robust_official) <= 0.02
  agree = fooled & fooled_official
  assert np.mean(np.asarray(out['first_target'])[agree] == first_official[agree]) >= 0.95
  norms = np.asarray(out['target_norms'], np.float64)
  assert np.mean(np.isfinite(norms) == np.isfinite(norms_official)) >= 0.95  # Which runs found one.
  found = np.isfinite(norms) & np.isfinite(norms_official)
  close = np.abs(norms[found] - norms_official[found]) <= 1e-3 * norms_official[found]
  assert close.mean() >= 0.95, close.mean()
