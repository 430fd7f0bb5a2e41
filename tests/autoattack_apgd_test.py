"""APGD: the pure pieces against their formulas, and whole runs against the official code.

The official runs replay the exact random numbers: torch's `rand`/`randn` are recorded during the
official `perturb` and fed to ours as `noise` (docs/autoattack.md, section 6, exact-noise harness).
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aa_reference as ref
from rpat_jax.autoattack import apgd, losses

pytestmark = pytest.mark.xla_optimized  # Its time goes into running the attacks' loops.

torch = pytest.importorskip('torch')
autopgd = pytest.importorskip('pyautoattack.autopgd_base')
torch.set_num_threads(1)  # pytest -n 2 runs two workers on two cores.


def test_checkpoint_schedule_of_the_paper():
  is_checkpoint, windows = apgd.checkpoint_schedule(100)
  assert list(np.nonzero(is_checkpoint)[0]) == [21, 40, 56, 69, 79, 86, 92, 98]
  assert list(windows[is_checkpoint]) == [22, 19, 16, 13, 10, 7, 6, 6]
  is_checkpoint, windows = apgd.checkpoint_schedule(10)  # Integer rules, not ceil(p_j * N).
  assert list(np.nonzero(is_checkpoint)[0]) == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_losses_and_gradients_match_the_official_ones():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 10)).astype(np.float32) * 3
  labels = rng.integers(0, 10, 64)
  labels[:8] = logits[:8].argmax(1)  # Some points with the label on top, some not.
  targets = (labels + 1 + rng.integers(0, 9, 64)) % 10
  official = types.SimpleNamespace(y_target=torch.from_numpy(targets))
  for ours, theirs, use_targets in ((losses.dlr, autopgd.APGDAttack.dlr_loss, False),
                                    (losses.dlr_targeted, autopgd.APGDAttack_targeted.dlr_loss_targeted, True)):
    z = torch.from_numpy(logits).requires_grad_()
    value = theirs(official, z, torch.from_numpy(labels))
    grad_theirs = torch.autograd.grad(value.sum(), [z])[0].numpy()
    args = (jnp.asarray(labels), jnp.asarray(targets) if use_targets else None)
    np.testing.assert_allclose(ours(jnp.asarray(logits), *args), value.detach().numpy(), rtol=1e-6, atol=1e-6)
    grad_ours = jax.grad(lambda l: ours(l, *args).sum())(jnp.asarray(logits))
    np.testing.assert_allclose(grad_ours, grad_theirs, rtol=1e-5, atol=1e-6)
  # Margin: negative iff misclassified.
  margin = np.asarray(losses.margin(jnp.asarray(logits), jnp.asarray(labels)))
  others = np.where(np.eye(10, dtype=bool)[labels], -np.inf, logits).max(1)
  np.testing.assert_allclose(margin, logits[np.arange(64), labels] - others, rtol=1e-6)


def test_start_point_and_projection():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(0.3, 0.7, (4, 8, 8, 3)).astype(np.float32))
  eps = 0.05
  linf = apgd.start_point(x, jnp.asarray(rng.uniform(-1, 1, x.shape).astype(np.float32)), norm='Linf', eps=eps)
  np.testing.assert_allclose(np.abs(linf - x).reshape(4, -1).max(1), eps, rtol=1e-5)  # One coordinate at eps.
  l2 = apgd.start_point(x, jnp.asarray(rng.normal(size=x.shape).astype(np.float32)), norm='L2', eps=eps)
  np.testing.assert_allclose(np.sqrt(((l2 - x) ** 2).reshape(4, -1).sum(1)), eps, rtol=1e-5)
  # L2 "scale into the ball, then clip" is not the projection onto ball and box: copy it exactly.
  v = x + jnp.asarray(rng.normal(0, 0.2, x.shape).astype(np.float32))
  delta = np.asarray(v - x)
  size = np.sqrt((delta ** 2).reshape(4, -1).sum(1)).reshape(4, 1, 1, 1)
  expected = np.clip(np.asarray(x) + delta / (size + 1e-12) * np.minimum(eps, size), 0, 1)
  np.testing.assert_allclose(apgd.project(x, v, norm='L2', eps=eps), expected, atol=1e-7)


def _linear_problem(num_points=40):
  """Two-class linear logits z = [0, w.x + c]; the label is class 1 where w.x + c > 0."""
  rng = np.random.default_rng(2)
  w = rng.normal(size=(4, 4, 3)).astype(np.float32)
  x = rng.uniform(0.4, 0.6, (num_points, 4, 4, 3)).astype(np.float32)
  c = -(x * w).sum((1, 2, 3)).mean()
  score = (x * w).sum((1, 2, 3)) + c

  def logits_fn(images):
    s = jnp.sum(images * w, axis=(1, 2, 3)) + c
    return jnp.stack([jnp.zeros_like(s), s], axis=1)

  return logits_fn, x, (score > 0).astype(np.int32), np.abs(score), w


@pytest.mark.parametrize('norm', ['Linf', 'L2'])
def test_linear_model_fooled_iff_the_minimal_distance_is_within_eps(norm):
  logits_fn, x, y, distance_scale, w = _linear_problem()
  # Far from the box faces, the minimal perturbation is |score| / |w|_dual.
  dual = np.abs(w).sum() if norm == 'Linf' else np.sqrt((w ** 2).sum())
  minimal = distance_scale / dual
  eps = float(np.median(minimal))
  clear = np.abs(minimal - eps) > 0.02 * eps
  out = apgd.apgd(logits_fn, jnp.asarray(x), jnp.asarray(y), jax.random.split(jax.random.key(0), len(x)),
                  norm=norm, eps=eps, n_iter=50)
  np.testing.assert_array_equal(np.asarray(out['fooled'])[clear], (minimal <= eps)[clear])
  delta = np.asarray(out['x_adv']) - x
  size = np.abs(delta).reshape(len(x), -1).max(1) if norm == 'Linf' else np.sqrt((delta ** 2).reshape(len(x), -1).sum(1))
  assert size.max() <= eps * (1 + 1e-5) and 0 <= np.asarray(out['x_adv']).min() <= np.asarray(out['x_adv']).max() <= 1


def _official_run(norm, eps, loss, n_iter, points=100):
  """Runs the official attack, recording its random numbers and the subsets each run attacked."""
  weights = ref.make_weights()
  x, y = ref.make_points(points, weights=weights)
  net = ref.torch_model(weights)
  if loss == 'ce':
    attack = autopgd.APGDAttack(net, n_restarts=1, n_iter=n_iter, eps=eps, norm=norm, seed=0, loss='ce',
                                device='cpu')
  else:
    attack = autopgd.APGDAttack_targeted(net, n_restarts=1, n_iter=n_iter, eps=eps, norm=norm, seed=0,
                                         device='cpu', n_target_classes=9)
  draws, subsets = [], []
  single_run = attack.attack_single_run

  def recording_run(x_subset, y_subset, x_init=None):
    subsets.append(ref.to_nhwc(x_subset))
    return single_run(x_subset, y_subset, x_init)

  attack.attack_single_run = recording_run
  original = torch.rand if norm == 'Linf' else torch.randn

  def recording_draw(*args, **kwargs):
    out = original(*args, **kwargs)
    draws.append(out.numpy().transpose(0, 2, 3, 1) * (2 if norm == 'Linf' else 1) - (1 if norm == 'Linf' else 0))
    return out

  name = 'rand' if norm == 'Linf' else 'randn'
  setattr(torch, name, recording_draw)
  try:
    x_adv = ref.to_nhwc(attack.perturb(*ref.to_torch(x, y)))
  finally:
    setattr(torch, name, original)
  noise = np.zeros((9 if loss != 'ce' else 1,) + x.shape, np.float32)
  for run, (subset, draw) in enumerate(zip(subsets, draws)):
    rows = [int(np.nonzero((x == image).all(axis=(1, 2, 3)))[0][0]) for image in subset]
    noise[run, rows] = draw
  return weights, x, y, x_adv, noise


@pytest.mark.parametrize('norm,eps,loss,n_iter', [('Linf', 2 / 255, 'ce', 100), ('L2', 0.1, 'ce', 30),
                                                  ('Linf', 1 / 255, 'dlr-targeted', 12),
                                                  ('Linf', 2 / 255, 'ce', 3)])
def test_same_points_fooled_as_the_official_code_with_its_random_numbers(norm, eps, loss, n_iter):
  weights, x, y, official_adv, noise = _official_run(norm, eps, loss, n_iter)
  logits_fn = ref.jax_logits_fn(weights)
  attack = jax.jit(functools.partial(apgd.apgd, logits_fn, norm=norm, eps=eps, loss=loss, n_iter=n_iter))
  ours = attack(jnp.asarray(x), jnp.asarray(y, jnp.int32), noise=jnp.asarray(noise))
  ours_adv = np.asarray(ours['x_adv'])
  fooled_official = np.asarray(logits_fn(jnp.asarray(official_adv))).argmax(1) != y
  fooled_ours = np.asarray(logits_fn(jnp.asarray(ours_adv))).argmax(1) != y
  clean_correct = np.asarray(logits_fn(jnp.asarray(x))).argmax(1) == y
  assert 0.2 < 1 - (fooled_official | ~clean_correct).mean() < 0.8  # A regime where the attack matters.
  assert (fooled_official == fooled_ours).mean() >= 0.99
  np.testing.assert_array_equal(np.asarray(ours['fooled']), fooled_ours & clean_correct)
  both = fooled_official & fooled_ours
  differing = (np.abs(official_adv - ours_adv) > 1e-5).reshape(len(x), -1).mean(1)[both]
  if n_iter <= 3:  # Before float rounding can compound, the iterates are the official ones.
    np.testing.assert_allclose(ours_adv, official_adv, atol=1e-6)
  else:  # Afterwards most adversarials still coincide coordinate by coordinate.
    assert np.median(differing) < 0.01


def test_per_point_keys_make_results_batch_independent():
  weights = ref.make_weights()
  x, y = ref.make_points(32, weights=weights)
  keys = jax.random.split(jax.random.key(3), 32)
  attack = functools.partial(apgd.apgd, ref.jax_logits_fn(weights), norm='Linf', eps=1 / 255, n_iter=10)
  whole = attack(jnp.asarray(x), jnp.asarray(y), keys)
  half = attack(jnp.asarray(x[:16]), jnp.asarray(y[:16]), keys[:16])
  np.testing.assert_array_equal(whole['fooled'][:16], half['fooled'])
  np.testing.assert_allclose(whole['x_adv'][:16], half['x_adv'], atol=1e-6)
