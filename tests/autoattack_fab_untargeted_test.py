"""Untargeted FAB (AutoAttack's plus version): a linear model with a known answer, and parity with the
official `pyautoattack` 0.2.0 `FABAttack_PT(targeted=False)` on the tiny network of aa_reference.

Restart 0 is deterministic; the random starts of later restarts are replayed from the official
torch.rand / torch.randn draws (recorded during the official `perturb`, as in autoattack_apgd_test).
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
fab_pt = pytest.importorskip('pyautoattack.fab_pt')
torch.set_num_threads(1)  # pytest -n 2 runs two workers on two cores.


def _norm(v, norm):
  v = np.asarray(v, np.float64).reshape(len(v), -1)
  return np.abs(v).max(1) if norm == 'Linf' else np.sqrt((v * v).sum(1))


def _linear_fab_factor(n_iter, alpha_max=0.1, eta=1.05, beta=0.9):
  """best_norm / minimal distance of FAB from x0 on a linear model when the box faces stay out of
  reach: x1 = x0 + s d* (d* the projection of x0) follows a scalar recursion (as in autoattack_fab_test)."""
  s, best = 0.0, np.inf
  for _ in range(n_iter):
    alpha = min(abs(1 - s) / (abs(1 - s) + 1), alpha_max)
    s = (s + eta * (1 - s)) * (1 - alpha) + eta * alpha
    if s > 1:
      best, s = min(best, s), beta * s
  return best


def _check_outputs(out, x, y, norm, eps, logits_fn):
  """Shapes, the eps ball, the box, clean images where not fooled, misclassification where fooled."""
  x_adv, fooled = np.asarray(out['x_adv']), np.asarray(out['fooled'])
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert (_norm(x_adv - x, norm) <= eps * (1 + 1e-6)).all()
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  np.testing.assert_array_equal(x_adv[~fooled], x[~fooled])
  assert (np.asarray(logits_fn(jnp.asarray(x_adv))).argmax(1)[fooled] != y[fooled]).all()
  np.testing.assert_array_equal(fooled, np.asarray(out['first_restart']) >= 0)
  np.testing.assert_array_equal(np.asarray(out['best_norm']), np.asarray(out['restart_norms']).min(0))


# ---------------------------------------------------------------------------------------------------
# A linear model with three classes: the minimal distance is known in closed form.

_LINEAR_SHAPE = (4, 4, 3)


def _three_class_problem(n=96, seed=0):
  """Logits z = [0, w1.(x - 1/2) - 0.4, w2.(x - 1/2) - 0.8]; w1 and w2 read disjoint halves of the pixels,
  so moving towards one boundary leaves the other logit unchanged. For a point labelled 0 the minimal
  adversarial distance (box faces out of reach: x in [0.4, 0.6]) is min_k -z_k / ||w_k||_dual, and
  FAB steps towards the argmin class throughout. All labels are 0; points with argmax != 0 are
  clean-misclassified and must be left alone.
  """
  rng = np.random.default_rng(seed)
  dim = int(np.prod(_LINEAR_SHAPE))
  halves = np.arange(dim) % 2 == 0
  weight = np.zeros((dim, 3))
  weight[halves, 1], weight[~halves, 2] = rng.normal(size=(2, dim // 2)) * [[1.0], [2.0]]
  bias = np.array([0.0, -0.4 - 0.5 * weight[:, 1].sum(), -0.8 - 0.5 * weight[:, 2].sum()])
  x = rng.uniform(0.4, 0.6, (n, dim))
  x, weight, bias = x.astype(np.float32), weight.astype(np.float32), bias.astype(np.float32)
  logits = x.astype(np.float64) @ weight + bias
  y = np.zeros(n, np.int32)
  minimal = {}
  for norm in ('Linf', 'L2'):
    dual = np.abs(weight).sum(0) if norm == 'Linf' else np.sqrt((weight.astype(np.float64) ** 2).sum(0))
    minimal[norm] = np.min(-logits[:, 1:] / dual[1:], axis=1)
  return x.reshape((n,) + _LINEAR_SHAPE), y, weight, bias, logits, minimal


def _linear_jax(weight, bias):
  return lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(weight) + jnp.asarray(bias)


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_linear_model_fooled_iff_within_eps_and_best_norm_is_the_minimal_distance(norm):
  n_iter = 10
  x, y, weight, bias, logits, minimal = _three_class_problem()
  minimal = minimal[norm]
  correct = logits.argmax(1) == 0
  assert 10 <= (~correct).sum() <= 40 and (minimal[correct] < 0.2).all()  # Far from the box faces.
  expected = _linear_fab_factor(n_iter) * minimal
  # eps in the widest relative gap of the middle third of the expected norms: no point is ambiguous.
  middle = np.sort(expected[correct])[correct.sum() // 3:2 * correct.sum() // 3]
  gap = np.argmax(middle[1:] / middle[:-1])
  eps = float(np.sqrt(middle[gap] * middle[gap + 1]))

  logits_fn = _linear_jax(weight, bias)
  keys = jax.random.split(jax.random.key(0), len(x))
  for n_restarts in (1, 3):
    attack = jax.jit(functools.partial(fab.fab_untargeted, logits_fn, norm=norm, eps=eps, n_iter=n_iter,
                                       n_restarts=n_restarts))
    out = attack(jnp.asarray(x), jnp.asarray(y), keys)
    _check_outputs(out, x, y, norm, eps, logits_fn)
    np.testing.assert_array_equal(np.asarray(out['fooled']), correct & (expected <= eps))
    norms = np.asarray(out['restart_norms'], np.float64)
    # Restart 0 (from x0) is the scalar recursion exactly; every point's boundary is in reach.
    np.testing.assert_allclose(norms[0][correct], expected[correct], rtol=1e-4, atol=1e-7)  # fp32 logits.
    assert np.isinf(norms[:, ~correct]).all()
    # Later restarts (random starts) run only on the points still robust, and no adversarial lies
    # closer than the minimal distance.
    later = norms[1:]
    assert np.isinf(later[:, correct & (expected <= eps)]).all()
    assert (later[np.isfinite(later)] >= np.broadcast_to(minimal, later.shape)[np.isfinite(later)]
            * (1 - 1e-4)).all()
    if n_restarts > 1:
      assert np.isfinite(later[:, correct & (expected > eps)]).mean() > 0.9


def test_per_point_keys_make_results_batch_independent_and_eps_may_be_traced():
  weights = ref.make_weights()
  x, y = ref.make_points(32, weights=weights)
  keys = jax.random.split(jax.random.key(3), 32)
  attack = jax.jit(lambda images, labels, k, eps: fab.fab_untargeted(
      ref.jax_logits_fn(weights), images, labels, k, norm='L2', eps=eps, n_iter=5, n_restarts=2))
  whole = attack(jnp.asarray(x), jnp.asarray(y, jnp.int32), keys, np.float32(0.1))
  half = attack(jnp.asarray(x[:16]), jnp.asarray(y[:16], jnp.int32), keys[:16], np.float32(0.1))
  np.testing.assert_array_equal(whole['fooled'][:16], half['fooled'])
  np.testing.assert_allclose(whole['restart_norms'][:, :16], half['restart_norms'], rtol=1e-5)
  np.testing.assert_allclose(whole['x_adv'][:16], half['x_adv'], atol=1e-6)
  with pytest.raises(ValueError, match='keys'):
    fab.fab_untargeted(ref.jax_logits_fn(weights), jnp.asarray(x), jnp.asarray(y), eps=0.1, n_restarts=2)


# ---------------------------------------------------------------------------------------------------
# The tiny network of aa_reference, in torch and in JAX: parity with the official untargeted FAB.


def _run_official(model, x, y, *, norm, eps, n_iter, n_restarts):
  """The official untargeted FAB on NHWC numpy arrays, recording its random numbers.

  Returns (x_adv, fooled, restart_norms [n_restarts, B] (inf where the run found nothing or was not
  made), noise [n_restarts, B, H, W, C] (the start noise t, U[-1, 1] for Linf, N(0, I) for L2)).
  """
  runs = []

  class Recording(fab_pt.FABAttack_PT):

    def attack_single_run(self, x, y=None, use_rand_start=False, is_targeted=False):
      assert use_rand_start == (len(runs) > 0) and not is_targeted
      adv = super().attack_single_run(x, y, use_rand_start, is_targeted)
      runs.append((x.numpy().copy(), adv.numpy().copy()))
      return adv

  attack = Recording(model, norm=norm, n_restarts=n_restarts, n_iter=n_iter, eps=eps, seed=0,
                     verbose=False, device='cpu', targeted=False)
  draws = []
  name = 'rand' if norm == 'Linf' else 'randn'
  original = getattr(torch, name)

  def recording_draw(*args, **kwargs):
    out = original(*args, **kwargs)
    draws.append(out.numpy().transpose(0, 2, 3, 1) * (2 if norm == 'Linf' else 1) - (1 if norm == 'Linf' else 0))
    return out

  setattr(torch, name, recording_draw)
  try:
    xt, yt = ref.to_torch(x, y.astype(np.int64))
    x_adv = attack.perturb(xt, yt).numpy()
  finally:
    setattr(torch, name, original)
  assert len(draws) == max(len(runs) - 1, 0)  # One draw per random start, in the order of the runs.
  row_of = {row.tobytes(): i for i, row in enumerate(xt.numpy())}
  restart_norms = np.full((n_restarts, len(x)), np.inf)
  noise = np.zeros((n_restarts,) + x.shape, np.float32)
  for r, (subset, adv) in enumerate(runs):
    rows = np.array([row_of[row.tobytes()] for row in subset])
    found = _norm(adv - subset, norm)
    restart_norms[r, rows] = np.where(found > 0, found, np.inf)
    if r > 0:
      noise[r, rows] = draws[r - 1]
  fooled = (x_adv != xt.numpy()).any(axis=(1, 2, 3))
  return ref.to_nhwc(torch.from_numpy(x_adv)), fooled, restart_norms, noise


@pytest.mark.parametrize('norm,eps,n_restarts', [
    ('Linf', 1 / 255, 1), pytest.param('L2', 0.06, 1, marks=pytest.mark.slow),
    pytest.param('Linf', 1 / 255, 2, marks=pytest.mark.slow),
    pytest.param('L2', 0.06, 2, marks=pytest.mark.slow)])  # The fast tier keeps one case; CI's slow tier runs all.
def test_matches_official_on_tiny_network(norm, eps, n_restarts):
  """100 points, n_iter = 15; restart 1 replays the official random start noise."""
  n, n_iter = 100, 15
  weights = ref.make_weights()
  x, y = ref.make_points(n, weights=weights)
  logits_fn = ref.jax_logits_fn(weights)
  x_adv_official, fooled_official, norms_official, noise = _run_official(
      ref.torch_model(weights), x, y, norm=norm, eps=eps, n_iter=n_iter, n_restarts=n_restarts)
  attack = jax.jit(functools.partial(fab.fab_untargeted, logits_fn, norm=norm, eps=eps, n_iter=n_iter,
                                     n_restarts=n_restarts))
  out = attack(jnp.asarray(x), jnp.asarray(y.astype(np.int32)), noise=jnp.asarray(noise))
  _check_outputs(out, x, y, norm, eps, logits_fn)
  assert (_norm(x_adv_official - x, norm) <= eps * (1 + 1e-6)).all()
  fooled = np.asarray(out['fooled'])
  correct = np.asarray(logits_fn(jnp.asarray(x))).argmax(1) == y
  robust, robust_official = (correct & ~fooled).mean(), (correct & ~fooled_official).mean()
  print(f'{norm} eps={eps:.4g} restarts={n_restarts}: agreement {np.mean(fooled == fooled_official):.2f}, '
        f'robust ours {robust:.2f} official {robust_official:.2f}')
  assert 0.2 <= robust_official <= 0.8  # A mid-range eps: both outcomes are common.
  assert np.mean(fooled == fooled_official) >= 0.99 and abs(robust - robust_official) <= 0.01
  norms = np.asarray(out['restart_norms'], np.float64)
  assert np.mean(np.isfinite(norms) == np.isfinite(norms_official)) >= 0.98  # Which runs found one.
  found = np.isfinite(norms) & np.isfinite(norms_official)
  close = np.abs(norms[found] - norms_official[found]) <= 1e-3 * norms_official[found]
  print(f'  norms within rtol 1e-3: {close.mean():.3f} of {found.sum()} runs; restart-0 median rel diff '
        f'{np.median(np.abs(norms[0][found[0]] - norms_official[0][found[0]]) / norms_official[0][found[0]]):.2g}')
  assert close.mean() >= 0.95, close.mean()
  if n_restarts > 1:  # The random-start restart ran, found adversarials, and matches as well.
    later = np.abs(norms[1][found[1]] - norms_official[1][found[1]]) <= 1e-3 * norms_official[1][found[1]]
    print(f'  restart 1: {found[1].sum()} runs found one in both, {later.mean():.3f} within rtol 1e-3')
    assert found[1].sum() >= 5 and later.mean() >= 0.95
