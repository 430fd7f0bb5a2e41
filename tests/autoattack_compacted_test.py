"""The attacks driven from the host over the points still robust (`compacted`) against the pure `lax`
functions the other tests check against the official code: the same points fooled, adversarials that
are adversarial and within eps, less work, and counts of images through the network that add up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aa_reference as ref
from rpat_jax.sharding import parallel
from rpat_jax.attacks import point_keys
from rpat_jax.autoattack import apgd, compacted, ensemble, fab, square

EPS = 2 / 255


@pytest.fixture(scope='module')
def problem():
  weights = ref.make_weights()
  x, y = ref.make_points(100, weights=weights)
  return ref.jax_logits_fn(weights), x, y


def test_buckets_bound_the_padding_and_the_number_of_shapes():
  for multiple in (1, 8):
    sizes = {compacted.bucket_size(count, 256, multiple) for count in range(1, 257)}
    assert len(sizes) <= 8 * 5 + 1, sorted(sizes)  # 8..256: five doublings, 8 sizes each.
    for count in range(1, 257):
      size = compacted.bucket_size(count, 256, multiple)
      assert count <= size <= 256 and size % multiple == 0
      if count >= 64 and multiple == 1:
        assert size - count < count / 8
  assert compacted.bucket_size(20, 20) == 20 and compacted.bucket_size(30, 30, 8) == 32


def _engine(logits_fn, batch_size):
  return compacted.Engine(logits_fn, parallel.make_mesh(), batch_size)


def _fooled(logits_fn, x, y, x_adv):
  """Clean-correct points misclassified at x_adv (what the attacks' `fooled` means)."""
  return (np.asarray(logits_fn(x)).argmax(1) == y) & (np.asarray(logits_fn(x_adv)).argmax(1) != y)


def _check_adversarials(logits_fn, x, y, x_adv, fooled, norm='Linf', eps=EPS):
  delta = (x_adv - x).reshape(len(x), -1)
  size = np.abs(delta).max(1) if norm == 'Linf' else np.sqrt((delta.astype(np.float64) ** 2).sum(1))
  assert size.max() <= eps * (1 + 1e-5) and 0 <= x_adv.min() and x_adv.max() <= 1
  assert (np.asarray(logits_fn(x_adv)).argmax(1)[fooled] != y[fooled]).all()
  np.testing.assert_array_equal(x_adv[~fooled], x[~fooled])


@pytest.mark.xla_optimized  # The lax function's loops.
@pytest.mark.parametrize('loss', [pytest.param('ce', marks=pytest.mark.slow), 'dlr-targeted'])
def test_apgd_fools_the_points_the_lax_function_fools_with_less_work(problem, loss):
  logits_fn, x, y = problem
  options = dict(norm='Linf', eps=EPS, loss=loss, n_iter=20, n_restarts=1, n_target_classes=3)
  key = jax.random.key(3)
  indices = np.arange(len(x))
  reference = apgd.apgd(logits_fn, jnp.asarray(x), jnp.asarray(y), point_keys(key, jnp.asarray(indices)),
                        **options)
  engine = _engine(logits_fn, 100)
  x_adv, _ = compacted.make_apgd(logits_fn, key, **options)(engine, x, y, indices)
  fooled = _fooled(logits_fn, x, y, x_adv)
  np.testing.assert_array_equal(fooled, np.asarray(reference['fooled']))
  _check_adversarials(logits_fn, x, y, x_adv, fooled)
  runs = 3 if loss == 'dlr-targeted' else 1
  masked = 100 * (options['n_iter'] + 1) * runs  # The lax function's: every point, every iteration, every run.
  assert 0 < engine.counts['backward'] < 0.8 * masked, engine.counts


def test_apgd_counts_every_image_of_every_call(problem):
  """eps so small that no point is fooled: nothing leaves, so the work is the bucket times the iterations."""
  logits_fn, x, y = problem
  engine = _engine(logits_fn, 100)
  attack = compacted.make_apgd(logits_fn, jax.random.key(0), norm='Linf', eps=1e-6, loss='ce', n_iter=7)
  x_adv, _ = attack(engine, x, y, np.arange(len(x)))
  correct = int((np.asarray(logits_fn(x)).argmax(1) == y).sum())
  size = compacted.bucket_size(correct, 100)
  assert correct == 90 and size == 96
  assert engine.counts == {'forward': 100 + 8 * size, 'backward': 8 * size}  # Clean pass, start, 7 iterations.
  np.testing.assert_array_equal(x_adv, x)


@pytest.mark.parametrize('weights', ['embedded', 'as arguments'])
def test_apgd_compiles_one_gradient_program_per_bucket(problem, weights):
  """A run's start and its iterations are one program, whether the weights are embedded in it or passed
  as arguments (`hoisted_jit`, which an unused 4 MiB array closed over triggers here): the network is
  traced once at the bucket's size, for the start, the iterations and a second run alike."""
  logits_fn, x, y = problem
  padding = jnp.zeros((1 << 20,), jnp.float32) if weights == 'as arguments' else None
  traced = []

  def counted(images):
    traced.append(images.shape[0])
    logits = logits_fn(images)
    return logits if padding is None else logits + padding[0]
  engine = _engine(counted, 100)
  attack = compacted.make_apgd(counted, jax.random.key(0), norm='Linf', eps=1e-6, loss='ce', n_iter=12,
                               n_restarts=2, check_every=5)
  attack(engine, x, y, np.arange(len(x)))
  assert traced.count(96) == 1, traced  # 90 clean-correct points: the bucket of 96.


@pytest.mark.xla_optimized  # The lax functions' loops.
@pytest.mark.slow  # One of the suite's heaviest: run by .ci/run after the README's command.
def test_fab_t_and_fab_fool_the_points_the_lax_functions_fool(problem):
  logits_fn, x, y = problem
  key = jax.random.key(5)
  indices = np.arange(len(x))
  eps = 4 / 255
  targeted = fab.fab_targeted(logits_fn, jnp.asarray(x), jnp.asarray(y), norm='Linf', eps=eps, n_iter=15,
                              n_target_classes=3)
  engine = _engine(logits_fn, 100)
  x_adv, _ = compacted.make_fab(logits_fn, key, norm='Linf', eps=eps, targeted=True, n_iter=15,
                                n_target_classes=3)(engine, x, y, indices)
  fooled = _fooled(logits_fn, x, y, x_adv)
  np.testing.assert_array_equal(fooled, np.asarray(targeted['fooled']))
  assert 0.1 < fooled.mean() < 0.8
  _check_adversarials(logits_fn, x, y, x_adv, fooled, eps=eps)
  assert engine.counts['backward'] < 0.8 * 100 * 15 * 3

  untargeted = fab.fab_untargeted(logits_fn, jnp.asarray(x), jnp.asarray(y), point_keys(key, jnp.asarray(indices)),
                                  norm='L2', eps=0.15, n_iter=10, n_restarts=2)
  x_adv, _ = compacted.make_fab(logits_fn, key, norm='L2', eps=0.15, targeted=False, n_iter=10,
                                n_restarts=2)(_engine(logits_fn, 100), x, y, indices)
  fooled = _fooled(logits_fn, x, y, x_adv)
  np.testing.assert_array_equal(fooled, np.asarray(untargeted['fooled']))
  _check_adversarials(logits_fn, x, y, x_adv, fooled, norm='L2', eps=0.15)


def test_square_fools_the_points_the_lax_function_fools(problem):
  logits_fn, x, y = problem
  key = jax.random.key(7)
  indices = np.arange(len(x))
  reference = square.square_attack(logits_fn, jnp.asarray(x), jnp.asarray(y), point_keys(key, jnp.asarray(indices)),
                                   norm='Linf', eps=EPS, n_queries=200)
  engine = _engine(logits_fn, 100)
  x_adv, _ = compacted.make_square(logits_fn, key, norm='Linf', eps=EPS, n_queries=200)(engine, x, y, indices)
  fooled = _fooled(logits_fn, x, y, x_adv)
  np.testing.assert_array_equal(fooled, np.asarray(reference['fooled']))
  assert 0.1 < fooled.mean() < 0.8
  _check_adversarials(logits_fn, x, y, x_adv, fooled)
  # The official code queries the active points only: 1 + the queries each used, the clean pass aside.
  queries = int(np.asarray(reference['queries']).sum())
  assert queries <= engine.counts['forward'] - 100 <= 1.3 * queries + 20 * 100, (engine.counts, queries)


def test_the_ensemble_reports_its_counts_by_part(problem):
  logits_fn, x, y = problem
  options = {'apgd-ce': {'n_iter': 5}, 'square': {'n_queries': 30}}
  result = ensemble.evaluate(logits_fn, x[:40], y[:40], eps=EPS, version='custom', attacks=['apgd-ce', 'square'],
                             batch_size=40, attack_options=options)
  counts = result['evaluations']
  assert set(counts['per_part']) == {'clean and checks', 'apgd-ce', 'square'}
  for kind in ('forward', 'backward'):
    assert counts['total'][kind] == sum(part[kind] for part in counts['per_part'].values())
    assert counts['per_point'][kind] == pytest.approx(counts['total'][kind] / 40)
  assert counts['per_part']['square']['backward'] == 0 < counts['per_part']['apgd-ce']['backward']
