"""Methods are declarations: the official forward orders as data, a method defined here trains a step, and
the step and the validation know no method by name."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from rpat_jax import data, experiment, methods, objectives, steps
from rpat_jax.config import validation
from rpat_jax.config import threats

# The train-mode forwards of each method's loss in the official call order (each one moves the BN running
# statistics), without and with RPAT: [B] adv_train(_ra).py, adv_trades(_ra).py, adv_mart(_ra).py,
# adv_consistency(_ra).py; [S] train_cifar_wa.py / train_cifar_ra.py (one online forward).
OFFICIAL_ORDERS = {
    'pgd_at': (('adv',), ('adv', 'interp', 'clean')),
    'trades': (('clean', 'adv', 'clean'), ('clean', 'adv', 'clean', 'interp')),
    'mart': (('clean', 'adv'), ('clean', 'adv', 'interp')),
    'consistency': (('adv',), ('adv', 'interp', 'clean')),
    'rebat': (('adv',), None),
    'rpat_plus_plus': (('adv',), None),
    'standard': (('adv',), None),  # The figure's references: one forward of the training input (x, or x + noise).
    'noise': (('adv',), None),
}


@pytest.mark.parametrize('name', list(OFFICIAL_ORDERS))
def test_each_builtin_method_declares_the_official_forward_order(name):
  method = methods.get(name)
  plain, with_rpat = OFFICIAL_ORDERS[name]
  assert method.forward_order(rpat=False) == plain
  if with_rpat is None:
    assert method.rpat_passes is None
    with pytest.raises(methods.MethodError, match='no RPAT variant'):
      method.forward_order(rpat=True)
  else:
    assert method.forward_order(rpat=True) == with_rpat
  assert method.views == (2 if name == 'consistency' else 1)
  teacher_inputs = {'rebat': ('adv',), 'rpat_plus_plus': ('clean', 'shifted')}.get(name)
  assert (method.teacher.inputs if method.teacher else None) == teacher_inputs
  assert method.post_step_input == ('clean' if teacher_inputs else None)  # [S]'s logged clean forward.


def test_the_train_step_and_the_validation_know_no_method_by_name():
  for module in (steps, validation):
    source = inspect.getsource(module)
    assert not [name for name in methods.names() if f"'{name}'" in source], module.__name__
  assert methods.names() == tuple(OFFICIAL_ORDERS)


def _logit_pairing_loss(config, logits, labels):
  """Adversarial logit pairing: CE on x' plus the squared logit gap between x and x'."""
  del config
  ce = objectives.cross_entropy(logits['adv'], labels)
  pairing = jnp.mean(jnp.square(logits['adv'] - logits['clean']))
  return ce + 0.5 * pairing, {'ce_loss': ce, 'pairing_loss': pairing}


@pytest.fixture
def logit_pairing():
  P = methods.Pass
  method = methods.register(methods.Method(
      name='logit_pairing', attack=methods.pgd_ce_attack, loss=_logit_pairing_loss,
      passes=(P('clean', 'clean'), P('adv', 'adv')),
      rpat_passes=(P('clean', 'clean'), P('adv', 'adv'), P('interp', 'interp'))))
  yield method
  methods.unregister(method.name)


def test_a_method_defined_outside_the_package_trains_a_step(logit_pairing):
  config = tiny_config(method=logit_pairing.name)
  setup = experiment.create(config)  # Validation accepts the registered name.
  state = setup.init_state()
  dataset = data.make_synthetic(64, 8, 16, 10, 0)
  batch = {'image': jnp.asarray(dataset.train_images), 'label': jnp.asarray(dataset.train_labels)}
  step = jax.jit(steps.make_train_step(setup.config, setup.forward, steps_per_epoch=4))
  new_state, metrics = step(state, batch, jax.random.key(0))
  assert set(metrics) == {'loss', 'lr', 'ce_loss', 'pairing_loss', 'rpat_loss', 'clean_acc', 'acc'}
  np.testing.assert_allclose(metrics['loss'], metrics['ce_loss'] + 0.5 * metrics['pairing_loss']
                             + metrics['rpat_loss'], rtol=1e-5)
  assert int(new_state.step) == 1 and float(metrics['pairing_loss']) > 0
  # The running statistics moved through the declared order: z(x), then z(x'), then z(x~).
  x, _, x_adv = steps.adversarial_batch(setup.config, setup.forward, state, batch, jax.random.key(0))
  expected = state.batch_stats
  for images in (x, x_adv, 0.5 * x + 0.5 * x_adv):
    _, expected = setup.forward.train_logits(state.params, expected, images)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), new_state.batch_stats, expected)


def test_bad_declarations_are_refused_with_the_field_named(logit_pairing):
  P = methods.Pass
  with pytest.raises(methods.MethodError, match='already registered'):
    methods.register(logit_pairing)
  with pytest.raises(methods.MethodError, match="input 'noise'; allowed: clean, adv, interp, shifted"):
    methods.register(methods.Method(name='bad', attack=methods.pgd_ce_attack, loss=_logit_pairing_loss,
                                    passes=(P('adv', 'noise'),)))
  with pytest.raises(methods.MethodError, match='rpat_passes must include'):
    methods.register(methods.Method(name='bad', attack=methods.pgd_ce_attack, loss=_logit_pairing_loss,
                                    passes=(P('adv', 'adv'),), rpat_passes=(P('adv', 'adv'),)))
  assert 'bad' not in methods.names()
  with pytest.raises(validation.ConfigError, match="method='nope' is not allowed; allowed: pgd_at"):
    validation.validate(tiny_config(method='nope'), device_count=1)


@pytest.mark.parametrize('method', ['rebat', 'rpat_plus_plus'])
@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_sotas_methods_attack_from_a_start_inside_the_eps_ball(method, norm):
  """[S]'s attack_pgd starts at a random point of the eps-ball (`attack.random_start`), not at TRADES'
  x + 0.001 N(0, 1). With a flat loss (zero gradient) the attack's output is its start."""
  config = tiny_config(**{'method': method, 'rpat.enabled': False, 'ema.enabled': True, 'attack.norm': norm,
                          'attack.eps': None, 'attack.step_size': None})
  config = threats.resolve(config)
  x = jnp.full((64, 16, 16, 3), 0.5)
  flat_logits = lambda images: jnp.zeros((images.shape[0], 10))
  labels = jnp.zeros(64, jnp.int32)
  delta = np.asarray(methods.get(method).attack(config, flat_logits, jax.random.key(0), x, labels) - x)
  delta = delta.reshape(64, -1)
  eps = config.attack.eps
  if norm == 'linf':
    assert np.abs(delta).max() <= eps + 1e-6 and np.abs(delta).mean() > 0.4 * eps  # U(-eps, eps): mean eps/2.
  else:
    radii = np.linalg.norm(delta, axis=1)
    assert radii.max() <= eps * (1 + 1e-5) and radii.mean() > 0.3 * eps  # Radius U(0, eps): mean eps/2.
  config.attack.random_start = False
  unmoved = methods.get(method).attack(config, flat_logits, jax.random.key(0), x, labels)
  np.testing.assert_array_equal(unmoved, x)


def test_the_figure_references_train_on_x_and_on_uniform_noise_in_the_box():
  """`standard` trains on x itself, `noise` on clip(x + U(-eps, eps)); their config words turn RPAT off."""
  from configs import smoke  # pylint: disable=import-outside-toplevel
  config = threats.resolve(smoke.get_config('standard'))
  assert config.method == 'standard' and not config.rpat.enabled
  validation.validate(config, device_count=1)
  x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
  labels = jnp.zeros(4, jnp.int32)
  assert methods.get('standard').attack(config, None, jax.random.key(1), x, labels) is x
  config = threats.resolve(smoke.get_config('noise'))
  noisy = methods.get('noise').attack(config, None, jax.random.key(1), x, labels)
  eps = config.attack.eps
  assert float(jnp.abs(noisy - x).max()) <= eps + 1e-7 and 0 <= float(noisy.min()) and float(noisy.max()) <= 1
  inside = (x > eps) & (x < 1 - eps)  # Away from the clip: the noise is uniform over (-eps, eps).
  assert abs(float(jnp.abs(noisy - x)[inside].mean()) - eps / 2) < eps / 10
