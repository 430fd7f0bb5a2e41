"""The official learning-rate schedules and SGD with coupled weight decay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from rpat_jax import optim


def _config(**schedule):
  config = default.get_config()
  with config.unlocked():
    config.schedule.update(schedule)
  return config


def test_multistep_decays_per_epoch_at_milestones():
  schedule = optim.learning_rate_schedule(_config(name='multistep', milestones=(100, 105)), steps_per_epoch=10)
  for epoch, lr in ((0, 0.1), (99, 0.1), (100, 0.01), (104, 0.01), (105, 0.001), (109, 0.001)):
    for step in (epoch * 10, epoch * 10 + 9):
      assert float(schedule(step)) == pytest.approx(lr)


def test_rebat_piecewise_is_set_per_iteration():
  schedule = optim.learning_rate_schedule(_config(name='rebat_piecewise'), steps_per_epoch=10)
  # t = (count + 1) / n: the 1000th update (count 999) has t = 100 and already uses the second stage.
  assert float(schedule(998)) == pytest.approx(0.1)
  assert float(schedule(999)) == pytest.approx(0.1 / 1.5)
  assert float(schedule(1498)) == pytest.approx(0.1 / 1.5)
  assert float(schedule(1499)) == pytest.approx(0.1 / 1.5 ** 2)


def test_sgd_matches_pytorch_update_rule():
  """PyTorch: buf = m*buf + g + wd*p; p -= lr*buf (dampening 0, no Nesterov)."""
  config = _config(name='constant')
  tx = optim.make_optimizer(config, steps_per_epoch=1)
  params = {'w': jnp.asarray([1.0, -2.0, 3.0])}
  grads = [np.array([0.5, 0.1, -0.2]), np.array([-0.3, 0.2, 0.4]), np.array([0.1, 0.1, 0.1])]
  state = tx.init(params)
  p, buf = np.array([1.0, -2.0, 3.0]), np.zeros(3)
  for g in grads:
    updates, state = tx.update({'w': jnp.asarray(g)}, state, params)
    params = jax.tree.map(lambda a, b: a + b, params, updates)
    buf = 0.9 * buf + g + 5e-4 * p
    p = p - 0.1 * buf
  np.testing.assert_allclose(params['w'], p, rtol=1e-6)
