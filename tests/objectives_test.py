"""The RPAT regulariser and cross-entropy against direct numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpat_jax import objectives


def _logits(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize('rates', [(0.5,), (0.3,), (0.25, 0.5, 0.8)])
def test_code_form_matches_numpy(rates):
  z_clean, z_adv = _logits(0, (6, 10)), _logits(1, (6, 10))
  z_interp = _logits(2, (len(rates), 6, 10))
  expected = np.mean([np.mean((z_interp[i] - (r * z_clean + (1 - r) * z_adv)) ** 2)
                      for i, r in enumerate(rates)])
  got = objectives.rpat_code_form(z_interp, z_clean, z_adv, jnp.asarray(rates))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize('rate', [0.5, 0.3, 0.9])
def test_paper_form_matches_numpy_and_scale(rate):
  z_clean, z_adv, z_interp = _logits(3, (5, 7)), _logits(4, (5, 7)), _logits(5, (1, 5, 7))
  alpha = 1 - rate  # Weight on the perturbation in the paper's x~ = x + alpha * delta.
  expected = np.mean(((z_interp[0] - z_clean) / alpha - (z_adv - z_interp[0]) / (1 - alpha)) ** 2)
  got = objectives.rpat_paper_form(z_interp, z_clean, z_adv, jnp.asarray([rate]))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  code = objectives.rpat_code_form(z_interp, z_clean, z_adv, jnp.asarray([rate]))
  np.testing.assert_allclose(got, code / (alpha * (1 - alpha)) ** 2, rtol=1e-5)


def test_paper_lambda_conversion_at_half_is_sixteen():
  assert objectives.paper_lambda_to_code(1 / 16, 0.5) == pytest.approx(1.0)


def test_interpolate_weights_clean_image_by_rate():
  x, x_adv = np.zeros((2, 3)), np.ones((2, 3))
  got = objectives.interpolate(jnp.asarray(x), jnp.asarray(x_adv), jnp.asarray([0.25, 0.75]))
  np.testing.assert_allclose(got[0], 0.75)
  np.testing.assert_allclose(got[1], 0.25)


@pytest.mark.parametrize('form', ['code', 'paper'])
def test_zero_for_a_model_linear_in_its_input(form):
  rng = np.random.default_rng(0)
  weight, bias = rng.normal(size=(12, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
  model = lambda v: v @ weight + bias  # Affine: its logits move linearly along any segment.
  x, x_adv = jnp.asarray(rng.uniform(size=(8, 12)), jnp.float32), jnp.asarray(rng.uniform(size=(8, 12)), jnp.float32)
  rates = jnp.asarray([0.2, 0.5, 0.7])
  z_interp = jax.vmap(model)(objectives.interpolate(x, x_adv, rates))
  value = objectives.RPAT_FORMS[form](z_interp, model(x), model(x_adv), rates)
  assert float(value) < 1e-9
  nonlinear = lambda v: jnp.tanh(3 * v) @ weight  # And not zero for a non-linear one.
  z_interp = jax.vmap(nonlinear)(objectives.interpolate(x, x_adv, rates))
  assert float(objectives.RPAT_FORMS[form](z_interp, nonlinear(x), nonlinear(x_adv), rates)) > 1e-3


def test_every_logit_receives_gradient():
  """Official semantics: no stop-gradient, the target r z(x) + (1-r) z(x') is live."""
  z_clean, z_adv, z_interp = (jnp.asarray(_logits(s, shape)) for s, shape in
                              ((6, (4, 3)), (7, (4, 3)), (8, (1, 4, 3))))
  grads = jax.grad(objectives.rpat_code_form, argnums=(0, 1, 2))(z_interp, z_clean, z_adv, jnp.asarray([0.5]))
  for grad in grads:
    assert float(jnp.abs(grad).sum()) > 0
  # d/dz~ = -2 d/dz / r: the interpolated and clean logits are pulled in opposite directions.
  np.testing.assert_allclose(grads[1], -0.5 * grads[0][0], rtol=1e-6)
  np.testing.assert_allclose(grads[2], -0.5 * grads[0][0], rtol=1e-6)


def test_cross_entropy_and_accuracy():
  logits, labels = _logits(9, (5, 4)), np.array([0, 1, 2, 3, 0])
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  np.testing.assert_allclose(objectives.cross_entropy(logits, labels),
                             -log_probs[np.arange(5), labels].mean(), rtol=1e-6)
  assert float(objectives.accuracy(logits, labels)) == pytest.approx(np.mean(logits.argmax(-1) == labels))


def _softmax(z):
  e = np.exp(z - z.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def test_trades_loss_against_numpy():
  rng = np.random.default_rng(5)
  z_clean, z_adv, z_target = (rng.normal(size=(6, 10)).astype(np.float32) * 2 for _ in range(3))
  labels = rng.integers(0, 10, 6)
  total, ce, kl = objectives.trades_loss(*map(jnp.asarray, (z_clean, z_adv, z_target, labels)), beta=6.0)
  p_clean, p_target = _softmax(z_clean.astype(np.float64)), _softmax(z_target.astype(np.float64))
  expected_ce = -np.log(p_clean[np.arange(6), labels]).mean()
  expected_kl = (p_target * (np.log(p_target) - np.log(_softmax(z_adv.astype(np.float64))))).sum() / 6
  np.testing.assert_allclose([ce, kl, total], [expected_ce, expected_kl, expected_ce + 6 * expected_kl], rtol=1e-5)


def test_mart_loss_against_numpy():
  rng = np.random.default_rng(6)
  z_clean, z_adv = (rng.normal(size=(8, 10)).astype(np.float32) * 2 for _ in range(2))
  labels = rng.integers(0, 10, 8)
  labels[:3] = z_adv[:3].argmax(1)  # Where the label is on top, the "wrong" class is the runner-up.
  total, adversarial, robust = objectives.mart_loss(*map(jnp.asarray, (z_clean, z_adv, labels)), beta=6.0)
  p_clean, p_adv = _softmax(z_clean.astype(np.float64)), _softmax(z_adv.astype(np.float64))
  order = np.argsort(p_adv, 1)
  wrong = np.where(order[:, -1] == labels, order[:, -2], order[:, -1])
  expected_adv = (-np.log(p_adv[np.arange(8), labels]).mean()
                  - np.log(1.0001 - p_adv[np.arange(8), wrong] + 1e-12).mean())
  kl = (p_clean * (np.log(p_clean) - np.log(p_adv + 1e-12))).sum(1)
  expected_robust = (kl * (1.0000001 - p_clean[np.arange(8), labels])).sum() / 8
  np.testing.assert_allclose([adversarial, robust, total],
                             [expected_adv, expected_robust, expected_adv + 6 * expected_robust], rtol=1e-5)


def test_jensen_shannon_against_numpy():
  rng = np.random.default_rng(8)
  z1, z2 = (rng.normal(size=(5, 10)).astype(np.float32) * 3 for _ in range(2))
  value = objectives.jensen_shannon(jnp.asarray(z1), jnp.asarray(z2), temperature=0.5)
  p1, p2 = _softmax(z1.astype(np.float64) / 0.5), _softmax(z2.astype(np.float64) / 0.5)
  log_m = np.log(np.maximum((p1 + p2) / 2, 1e-8))
  expected = 0.5 * ((p1 * (np.log(p1) - log_m)).sum() + (p2 * (np.log(p2) - log_m)).sum()) / 5
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert float(objectives.jensen_shannon(jnp.asarray(z1), jnp.asarray(z1), 0.5)) == pytest.approx(0, abs=1e-6)


def test_rebat_and_rpat_plus_plus_terms_against_numpy():
  rng = np.random.default_rng(9)
  teacher_adv, teacher_clean, teacher_interp, z_adv = (rng.normal(size=(4, 10)).astype(np.float32) for _ in range(4))
  kl = lambda target, logits: (_softmax(target) * (np.log(_softmax(target)) - np.log(_softmax(logits)))).sum() / 4
  np.testing.assert_allclose(objectives.boat_kl(jnp.asarray(teacher_adv), jnp.asarray(z_adv)),
                             kl(teacher_adv.astype(np.float64), z_adv.astype(np.float64)), rtol=1e-5)
  value = objectives.rpat_plus_plus_kl(*map(jnp.asarray, (teacher_clean, teacher_interp, z_adv)), rate=0.5)
  expected = kl(teacher_interp.astype(np.float64) - 0.5 * teacher_clean, 0.5 * z_adv.astype(np.float64))
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  # Only the online logits carry gradient.
  grads = jax.grad(lambda t, z: objectives.rpat_plus_plus_kl(t, t, z, 0.5), argnums=(0, 1))(
      jnp.asarray(teacher_clean), jnp.asarray(z_adv))
  assert float(jnp.abs(grads[0]).max()) == 0 and float(jnp.abs(grads[1]).max()) > 0
