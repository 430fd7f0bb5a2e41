"""PGD ([B]'s advertorch form, [S]'s attack_pgd, TRADES/MART's small-noise start): stay in the threat set
and the image box, raise the loss, find known optima."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpat_jax import attacks

_DIM = (4, 4, 3)


def _linear_model(seed=0, classes=5):
  rng = np.random.default_rng(seed)
  weight = jnp.asarray(rng.normal(size=(int(np.prod(_DIM)), classes)), jnp.float32)
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ weight)


def _data(n=16, seed=1, classes=5):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(size=(n,) + _DIM), jnp.float32)
  return x, jnp.asarray(rng.integers(0, classes, n))


def _loss(model, x, y):
  return attacks.cross_entropy_sum(model(x), y)


@pytest.mark.parametrize('norm,eps,step', [('linf', 8 / 255, 2 / 255), ('l2', 0.5, 0.1)])
def test_pgd_stays_in_ball_and_box_and_raises_loss(norm, eps, step):
  model, (x, y) = _linear_model(), _data()
  x_adv = jax.jit(lambda k, x, y: attacks.pgd(model, k, x, y, norm=norm, eps=eps, step_size=step,
                                              steps=10))(jax.random.key(0), x, y)
  delta = np.asarray(x_adv - x).reshape(x.shape[0], -1)
  if norm == 'linf':
    assert np.abs(delta).max() <= eps + 1e-6
  else:
    assert np.linalg.norm(delta, axis=1).max() <= eps * (1 + 1e-5)
  assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
  noise = attacks.random_start(jax.random.key(1), x, norm=norm, eps=eps)
  assert float(_loss(model, x_adv, y)) > float(_loss(model, x + noise, y))
  assert float(_loss(model, x_adv, y)) > float(_loss(model, x, y))


def test_random_start_inside_threat_set():
  x, _ = _data()
  for norm, eps in (('linf', 0.03), ('l2', 0.5)):
    delta = np.asarray(attacks.random_start(jax.random.key(2), x, norm=norm, eps=eps)).reshape(x.shape[0], -1)
    size = np.abs(delta).max(1) if norm == 'linf' else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps * (1 + 1e-5) and size.min() > 0
    assert np.all((np.asarray(x).reshape(x.shape[0], -1) + delta >= -1e-7))


def test_linf_pgd_finds_the_corner_of_a_two_class_linear_model():
  """For logits x @ W with 2 classes the CE maximiser in the Linf ball is x + eps*sign(w_other - w_y)."""
  rng = np.random.default_rng(3)
  weight = jnp.asarray(rng.normal(size=(int(np.prod(_DIM)), 2)), jnp.float32)
  model = lambda v: v.reshape(v.shape[0], -1) @ weight
  x = jnp.asarray(rng.uniform(0.2, 0.8, size=(8,) + _DIM), jnp.float32)  # Interior: no box clipping.
  y = jnp.asarray(rng.integers(0, 2, 8))
  eps = 8 / 255
  x_adv = attacks.pgd(model, jax.random.key(0), x, y, norm='linf', eps=eps, step_size=eps / 2, steps=8)
  direction = np.sign(np.asarray(weight[:, 1] - weight[:, 0]))
  expected = np.asarray(x).reshape(8, -1) + eps * direction * np.where(np.asarray(y) == 0, 1, -1)[:, None]
  np.testing.assert_allclose(np.asarray(x_adv).reshape(8, -1), expected, atol=1e-6)


def test_l2_pgd_reaches_the_sphere_along_the_gradient_of_a_linear_model():
  rng = np.random.default_rng(4)
  weight = jnp.asarray(rng.normal(size=(int(np.prod(_DIM)), 2)), jnp.float32)
  model = lambda v: v.reshape(v.shape[0], -1) @ weight
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(4,) + _DIM), jnp.float32)
  y = jnp.zeros(4, jnp.int32)
  eps = 0.25
  x_adv = attacks.pgd(model, jax.random.key(0), x, y, norm='l2', eps=eps, step_size=0.1, steps=20)
  direction = np.asarray(weight[:, 1] - weight[:, 0])
  direction = direction / np.linalg.norm(direction)
  delta = np.asarray(x_adv - x).reshape(4, -1)
  np.testing.assert_allclose(np.linalg.norm(delta, axis=1), eps, rtol=1e-4)
  np.testing.assert_allclose(delta / eps, np.broadcast_to(direction, delta.shape), atol=2e-2)


def test_sotas_pgd_is_advertorch_pgd_in_linf():
  model, (x, y) = _linear_model(), _data()
  hyper = dict(norm='linf', eps=8 / 255, step_size=2 / 255, steps=3)
  np.testing.assert_array_equal(attacks.pgd_sotas(model, jax.random.key(2), x, y, **hyper),
                                attacks.pgd(model, jax.random.key(2), x, y, **hyper))


def test_sotas_l2_starts_at_a_uniform_radius_and_steps_then_renorms():
  """[S]'s L2 start is a Gaussian direction at a radius uniform in [0, eps] (advertorch's is at the
  sphere); with a zero gradient the steps leave it there. Along a linear model's gradient it then
  reaches the sphere."""
  flat = lambda v: np.asarray(v).reshape(v.shape[0], -1)
  x = jnp.full((256,) + _DIM, 0.5)
  constant = lambda images: jnp.zeros((images.shape[0], 3))
  eps = 0.3
  x_adv = attacks.pgd_sotas(constant, jax.random.key(0), x, jnp.zeros(256, jnp.int32), norm='l2', eps=eps,
                            step_size=0.05, steps=2)
  radii = np.linalg.norm(flat(x_adv - x), axis=1)
  assert radii.max() <= eps * (1 + 1e-5) and radii.min() < 0.1 * eps and 0.4 * eps < radii.mean() < 0.6 * eps
  unmoved = attacks.pgd_sotas(constant, jax.random.key(0), x, jnp.zeros(256, jnp.int32), norm='l2', eps=eps,
                              step_size=0.05, steps=2, random_init=False)
  np.testing.assert_array_equal(unmoved, x)

  rng = np.random.default_rng(4)
  weight = jnp.asarray(rng.normal(size=(int(np.prod(_DIM)), 2)), jnp.float32)
  linear = lambda v: v.reshape(v.shape[0], -1) @ weight
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(4,) + _DIM), jnp.float32)
  x_adv = attacks.pgd_sotas(linear, jax.random.key(1), x, jnp.zeros(4, jnp.int32), norm='l2', eps=0.25,
                            step_size=0.1, steps=20)
  direction = np.asarray(weight[:, 1] - weight[:, 0])
  delta = flat(x_adv - x)
  np.testing.assert_allclose(np.linalg.norm(delta, axis=1), 0.25, rtol=1e-4)
  np.testing.assert_allclose(delta / 0.25, np.broadcast_to(direction / np.linalg.norm(direction), delta.shape),
                             atol=2e-2)


def test_pgd_same_key_same_result_and_no_gradient_to_inputs():
  model, (x, y) = _linear_model(), _data()
  run = lambda k: attacks.pgd(model, k, x, y, norm='linf', eps=0.03, step_size=0.01, steps=3)
  np.testing.assert_array_equal(run(jax.random.key(5)), run(jax.random.key(5)))
  assert not np.array_equal(run(jax.random.key(5)), run(jax.random.key(6)))
  grad = jax.grad(lambda v: jnp.sum(attacks.pgd(model, jax.random.key(0), v, y, norm='linf', eps=0.03,
                                                step_size=0.01, steps=2)))(x)
  assert float(jnp.abs(grad).sum()) == 0.0


@pytest.mark.parametrize('norm,eps,step', [('linf', 8 / 255, 2 / 255), ('l2', 0.5, 0.1)])
def test_small_noise_pgd_stays_in_ball_and_box_and_raises_its_loss(norm, eps, step):
  rng = np.random.default_rng(7)
  w = jnp.asarray(rng.normal(size=(4 * 4 * 3, 5)).astype(np.float32))
  logits_fn = lambda images: images.reshape(images.shape[0], -1) @ w
  x = jnp.asarray(rng.uniform(0, 1, (16, 4, 4, 3)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 5, 16))
  loss_fn = lambda logits: attacks.cross_entropy_sum(logits, labels)
  x_adv = attacks.small_noise_pgd(logits_fn, jax.random.key(0), x, loss_fn, norm=norm, eps=eps, step_size=step,
                                  steps=5)
  delta = np.asarray(x_adv - x).reshape(16, -1)
  size = np.abs(delta).max(1) if norm == 'linf' else np.sqrt((delta ** 2).sum(1))
  assert size.max() <= eps * (1 + 1e-5) and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
  assert float(loss_fn(logits_fn(x_adv))) > float(loss_fn(logits_fn(x)))
  again = attacks.small_noise_pgd(logits_fn, jax.random.key(0), x, loss_fn, norm=norm, eps=eps, step_size=step,
                                  steps=5)
  np.testing.assert_array_equal(x_adv, again)


@pytest.mark.parametrize('norm, eps', [('linf', 8 / 255), ('l2', 0.5)])
def test_evaluation_pgd_and_cw_do_not_depend_on_the_batch_size(norm, eps):
  """Each point's random start is keyed by its index among the points, not by its batch."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from rpat_jax.evaluate.pgd import make_robustness  # pylint: disable=import-outside-toplevel
  weights = jax.random.normal(jax.random.key(1), (8 * 8 * 3, 10))
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ weights
  x = np.asarray(jax.random.uniform(jax.random.key(2), (12, 8, 8, 3)))
  y = np.asarray(jnp.argmax(logits_fn(x), -1))
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(12))
  whole = attacks.random_start(keys, jnp.asarray(x), norm=norm, eps=eps)
  parts = [attacks.random_start(keys[i:i + 4], jnp.asarray(x[i:i + 4]), norm=norm, eps=eps) for i in (0, 4, 8)]
  np.testing.assert_array_equal(np.asarray(whole), np.concatenate(parts))
  robust = make_robustness(logits_fn, ml_collections.ConfigDict(dict(norm=norm, eps=eps, step_size=eps / 4)),
                           seed=0, steps=3)
  for loss in ('ce', 'cw'):
    np.testing.assert_array_equal(robust(x, y, 12, loss), robust(x, y, 4, loss))
