"""The train step: official forward order and BN modes, gradient flow, vectorised rates, one compile."""

import copy

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from rpat_jax import data, experiment, methods, steps


_SETUPS, _RUNS = {}, {}  # Memos by config: several tests start from the same state or take the same step.


def _setup(**overrides):
  """(config, forward, initial state, one batch of 64 raw images) of the tiny config with `overrides`."""
  config = tiny_config(**overrides)
  key = config.to_json(sort_keys=True)
  if key not in _SETUPS:
    setup = experiment.create(config)
    dataset = data.make_synthetic(64, 8, 16, 10, 0)
    batch = {'image': jnp.asarray(dataset.train_images), 'label': jnp.asarray(dataset.train_labels)}
    _SETUPS[key] = (setup.config, setup.forward, setup.init_state(), batch)
  config, forward, state, batch = _SETUPS[key]
  return copy.deepcopy(config), forward, state, batch  # A test may change its config.


def _run(overrides, state=None, **step_options):
  """One train step (steps_per_epoch=4) of the tiny config with `overrides` from `state` (default: the
  initial one): (new state, metrics). Pure, so a step already taken from the initial state is reused."""
  config, forward, fresh, batch = _setup(**overrides)
  key = (config.to_json(sort_keys=True), tuple(sorted(step_options.items())))
  if state is None and key in _RUNS:
    return _RUNS[key]
  step = jax.jit(steps.make_train_step(config, forward, steps_per_epoch=4, **step_options))
  result = step(state if state is not None else fresh, batch, jax.random.key(0))
  if state is None:
    _RUNS[key] = result
  return result


def _inputs(config, x, x_adv):
  return methods.make_inputs(config, x, x_adv, methods.INPUTS)


def test_metrics_and_loss_composition():
  _, metrics = _run({})
  assert set(metrics) == {'loss', 'lr', 'ce_loss', 'acc', 'rpat_loss', 'clean_acc'}
  np.testing.assert_allclose(metrics['loss'], metrics['ce_loss'] + 1.0 * metrics['rpat_loss'], rtol=1e-6)
  _, metrics = _run({'rpat.lam': 0.25})
  np.testing.assert_allclose(metrics['loss'], metrics['ce_loss'] + 0.25 * metrics['rpat_loss'], rtol=1e-6)
  _, plain = _run({'rpat.enabled': False})
  assert 'rpat_loss' not in plain
  np.testing.assert_allclose(plain['loss'], plain['ce_loss'])


def test_before_a_delayed_rpat_starts_the_step_runs_none_of_its_forwards():
  """As the official code (its `epoch >= RA_start` picks the loss): before rpat.start_epoch, PGD-AT is one
  train-mode forward z(x'), so the BN running statistics are those of that forward alone."""
  overrides = {'rpat.start_epoch': 1}
  config, forward, state, batch = _setup(**overrides)
  assert [steps.rpat_active(config, epoch) for epoch in (0, 1, 2)] == [False, True, True]
  before, metrics = _run(overrides, with_rpat=False)
  assert 'rpat_loss' not in metrics and 'clean_acc' not in metrics
  np.testing.assert_allclose(metrics['loss'], metrics['ce_loss'])
  _, _, x_adv = steps.adversarial_batch(config, forward, state, batch, jax.random.key(0))
  _, expected = forward.train_logits(state.params, state.batch_stats, x_adv)
  chex.assert_trees_all_close(before.batch_stats, expected, rtol=1e-5, atol=1e-6)
  after, metrics = _run(overrides, with_rpat=True)  # From the start epoch: three forwards, the term added.
  np.testing.assert_allclose(metrics['loss'], metrics['ce_loss'] + metrics['rpat_loss'], rtol=1e-6)
  assert not np.allclose(after.batch_stats['bn0']['mean'], before.batch_stats['bn0']['mean'])


def test_forwards_run_in_the_official_order_with_their_own_batch_statistics():
  config, forward, state, batch = _setup()
  x = data.to_float(batch['image'])
  x_adv = jnp.clip(x + 0.03, 0, 1)
  logits, stats = steps.train_passes(forward, config.passes, state.params, state.batch_stats,
                                     methods.get('pgd_at').rpat_passes, _inputs(config, x, x_adv))
  z_adv, z_interp, z_clean = logits['adv'], logits['interp'], logits['clean']
  expected_stats = state.batch_stats
  outputs = []
  for inputs in (x_adv, 0.5 * x + 0.5 * x_adv, x):  # z(x') -> z(x~) -> z(x)
    logits, expected_stats = forward.train_logits(state.params, expected_stats, inputs)
    outputs.append(logits)
  chex.assert_trees_all_close((z_adv, z_interp[0], z_clean), tuple(outputs), rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(stats, expected_stats, rtol=1e-6, atol=1e-7)
  reordered = state.batch_stats
  for inputs in (x, 0.5 * x + 0.5 * x_adv, x_adv):
    _, reordered = forward.train_logits(state.params, reordered, inputs)
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(reordered)))


def test_fused_forward_shares_one_set_of_batch_statistics():
  config, forward, state, batch = _setup(**{'passes.fused': True})
  x = data.to_float(batch['image'])
  x_adv = jnp.clip(x + 0.03, 0, 1)
  logits, _ = steps.train_passes(forward, config.passes, state.params, state.batch_stats,
                                 methods.get('pgd_at').rpat_passes, _inputs(config, x, x_adv))
  z_adv, z_interp, z_clean = logits['adv'], logits['interp'], logits['clean']
  stacked = jnp.concatenate([x_adv, 0.5 * x + 0.5 * x_adv, x])
  logits, _ = forward.train_logits(state.params, state.batch_stats, stacked)
  np.testing.assert_allclose(jnp.concatenate([z_adv, z_interp[0], z_clean]), logits, rtol=1e-5, atol=1e-5)
  _, metrics = _run({'passes.fused': True})
  assert np.isfinite(float(metrics['loss']))


@pytest.mark.parametrize('method', ['pgd_at', 'trades'])  # MART's groups are a subset of TRADES'.
def test_batched_forwards_give_the_official_sequence(method):
  """One vmapped pass over all train-mode forwards gives the separate passes' loss, gradients (so params)
  and sequentially updated running statistics; two rates cover the per-rate group."""
  overrides = {'method': method, 'rpat.rates': (0.3, 0.7)}
  separate, separate_metrics = _run(overrides)
  batched, batched_metrics = _run({**overrides, 'passes.batched': True})
  np.testing.assert_allclose(batched_metrics['loss'], separate_metrics['loss'], rtol=1e-6)
  for name in ('params', 'batch_stats'):
    chex.assert_trees_all_close(getattr(batched, name), getattr(separate, name), atol=1e-6)
  fresh = _setup()[2]
  assert not np.allclose(separate.batch_stats['bn0']['mean'], fresh.batch_stats['bn0']['mean'])


def test_unrolled_attack_computes_the_same_step():
  """attack.unroll writes the PGD steps out instead of looping: the same step (bit-identical on the dev
  machine; float rounding may differ elsewhere, hence the 1e-6)."""
  looped, looped_metrics = _run({'attack.unroll': False, 'attack.steps': 5})
  unrolled, unrolled_metrics = _run({'attack.unroll': True, 'attack.steps': 5})
  np.testing.assert_allclose(unrolled_metrics['loss'], looped_metrics['loss'], rtol=1e-6)
  chex.assert_trees_all_close(unrolled.params, looped.params, atol=1e-6)


def test_rates_are_vectorised_and_averaged():
  _, one = _run({'rpat.rates': (0.5,)})
  _, twice = _run({'rpat.rates': (0.5, 0.5)})  # The same point twice: the same regulariser.
  np.testing.assert_allclose(one['rpat_loss'], twice['rpat_loss'], rtol=1e-5)
  _, three = _run({'rpat.rates': (0.2, 0.5, 0.8)})
  assert float(three['rpat_loss']) != pytest.approx(float(one['rpat_loss']))


def test_detach_target_changes_the_gradient_not_the_loss():
  live, live_metrics = _run({})
  detached, detached_metrics = _run({'rpat.detach_target': True})
  np.testing.assert_allclose(live_metrics['loss'], detached_metrics['loss'], rtol=1e-6)
  differences = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(live.params),
                                                            jax.tree.leaves(detached.params))]
  assert max(differences) > 1e-7


def test_paper_form_is_the_code_form_times_sixteen_at_half():
  _, code = _run({})
  _, paper = _run({'rpat.form': 'paper'})
  np.testing.assert_allclose(paper['rpat_loss'], 16 * code['rpat_loss'], rtol=1e-4)


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_attack_bn_modes_both_leave_running_stats_to_the_loss_passes(mode):
  """Whatever statistics the attack uses, only the loss's forward (PGD-AT: z(x')) moves the running ones."""
  overrides = {'attack.bn_mode': mode, 'rpat.enabled': False}
  config, forward, state, batch = _setup(**overrides)
  new_state, metrics = _run(overrides)
  assert np.isfinite(float(metrics['loss'])) and int(new_state.step) == 1
  _, _, x_adv = steps.adversarial_batch(config, forward, state, batch, jax.random.key(0))
  _, expected = forward.train_logits(state.params, state.batch_stats, x_adv)
  chex.assert_trees_all_close(new_state.batch_stats, expected, rtol=1e-5, atol=1e-6)


def test_step_compiles_once_and_is_reproducible():
  config, forward, state, batch = _setup()
  train_step = chex.assert_max_traces(steps.make_train_step(config, forward, steps_per_epoch=4), n=1)
  step = jax.jit(train_step)
  first, _ = step(state, batch, jax.random.key(0))
  again, _ = step(state, batch, jax.random.key(0))
  chex.assert_trees_all_equal(first.params, again.params)
  for _ in range(2):
    first, _ = step(first, batch, jax.random.key(0))
  assert int(first.step) == 3


def test_bfloat16_compute_keeps_float32_params():
  new_state, metrics = _run({'model.dtype': 'bfloat16'})
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(new_state.params))
  assert np.isfinite(float(metrics['loss']))


@pytest.mark.parametrize('method,extra', [('trades', {'kl_loss'}), ('mart', {'mart_adv_loss', 'mart_robust_loss'})])
def test_trades_and_mart_train_with_and_without_rpat(method, extra):
  config, forward, state, batch = _setup(method=method)
  step = jax.jit(steps.make_train_step(config, forward, steps_per_epoch=4))
  losses = []
  for i in range(4):  # The same batch: the loss must fall.
    state, metrics = step(state, batch, jax.random.key(0))
    losses.append(float(metrics['loss']))
  assert set(metrics) == {'loss', 'lr', 'ce_loss', 'acc', 'rpat_loss', 'clean_acc'} | extra
  rpat = float(metrics['rpat_loss'])
  base = float(metrics['loss']) - rpat  # lam = 1.
  if method == 'trades':
    np.testing.assert_allclose(base, metrics['ce_loss'] + 6.0 * metrics['kl_loss'], rtol=1e-5)
  else:
    np.testing.assert_allclose(base, metrics['mart_adv_loss'] + 6.0 * metrics['mart_robust_loss'], rtol=1e-5)
  assert losses[-1] < losses[0]
  _, plain = _run({'method': method, 'rpat.enabled': False})
  assert 'rpat_loss' not in plain and np.isfinite(float(plain['loss']))


def test_weight_average_is_a_copy_then_an_ema_of_params_and_bn_statistics():
  config, forward, state, batch = _setup(**{'ema.enabled': True, 'ema.decay': 0.9, 'ema.start_epoch': 1})
  step = jax.jit(steps.make_train_step(config, forward, steps_per_epoch=1))  # Step s is in epoch s.
  first, _ = step(state, batch, jax.random.key(0))  # Epoch 0 < start_epoch: a copy.
  chex.assert_trees_all_close(first.ema, {'params': first.params, 'batch_stats': first.batch_stats})
  second, _ = step(first, batch, jax.random.key(0))  # Epoch 1: decay * ema + (1 - decay) * online.
  expected = jax.tree.map(lambda e, o: 0.9 * e + 0.1 * o, first.ema,
                          {'params': second.params, 'batch_stats': second.batch_stats})
  chex.assert_trees_all_close(second.ema, expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(jax.tree.leaves(second.ema['params'])[0], jax.tree.leaves(second.params)[0])
  assert steps.averaged(second).params is second.ema['params']


def test_consistency_at_attacks_two_views_and_shares_lambda_unless_separated():
  _, shared = _run({'method': 'consistency', 'rpat.lam': 0.5})
  assert {'consistency_loss', 'rpat_loss', 'ce_loss'} <= set(shared) and float(shared['consistency_loss']) > 0
  np.testing.assert_allclose(shared['loss'], shared['ce_loss'] + 0.5 * shared['consistency_loss']
                             + 0.5 * shared['rpat_loss'], rtol=1e-5)
  _, separate = _run({'method': 'consistency', 'rpat.lam': 0.5, 'consistency.lam': 2.0})
  np.testing.assert_allclose(separate['loss'], separate['ce_loss'] + 2.0 * separate['consistency_loss']
                             + 0.5 * separate['rpat_loss'], rtol=1e-5)
  _, plain = _run({'method': 'consistency', 'rpat.enabled': False})
  np.testing.assert_allclose(plain['loss'], plain['ce_loss'] + 1.0 * plain['consistency_loss'], rtol=1e-5)


@pytest.mark.parametrize('method', ['rebat', 'rpat_plus_plus'])
def test_rebat_methods_add_the_teacher_term_from_the_warmup_epoch(method):
  overrides = {'method': method, 'rpat.enabled': False, 'ema.enabled': True, 'attack.bn_mode': 'train'}
  config, forward, state, batch = _setup(**overrides, **{'ema.start_epoch': 1})
  step = jax.jit(steps.make_train_step(config, forward, steps_per_epoch=1))  # Step s is in epoch s.
  first, warmup = step(state, batch, jax.random.key(0))  # Epoch 0: the term is computed, not added.
  np.testing.assert_allclose(warmup['loss'], warmup['ce_loss'], rtol=1e-6)
  chex.assert_trees_all_close(first.ema['params'], first.params)  # A copy during warm-up.
  second, metrics = step(first, batch, jax.random.key(0))
  assert float(metrics['teacher_loss']) > 0
  np.testing.assert_allclose(metrics['loss'], metrics['ce_loss'] + 1.0 * metrics['teacher_loss'], rtol=1e-5)
  assert int(second.step) == 2


@pytest.mark.parametrize('method', [pytest.param('rebat', marks=pytest.mark.slow), 'rpat_plus_plus'])
def test_official_teacher_bn_uses_batch_statistics_in_the_first_average_epoch_only(method):
  overrides = {'method': method, 'rpat.enabled': False, 'ema.enabled': True, 'ema.start_epoch': 1}
  config, forward, state, batch = _setup(**overrides, **{'rebat.teacher_bn': 'official'})
  x = data.to_float(batch['image'])
  x_adv = jnp.clip(x + 0.03, 0.0, 1.0)
  inputs = [x_adv] if method == 'rebat' else [x, jnp.clip(x + 0.5 * (x_adv - x), 0.0, 1.0)]
  params, stats = state.ema['params'], state.ema['batch_stats']
  expected_train, moved = [], stats
  for image in inputs:  # [S]'s order, each forward moving the running statistics.
    logits, moved = forward.train_logits(params, moved, image)
    expected_train.append(logits)
  expected_eval = [forward.eval_logits(params, stats, image) for image in inputs]

  teacher = methods.get(method).teacher
  logits, after = steps.teacher_logits(config, forward, teacher, state.ema, jnp.asarray(1), _inputs(config, x, x_adv))
  chex.assert_trees_all_close((logits, after), (expected_train, moved), rtol=1e-4, atol=1e-5)
  assert not np.allclose(jax.tree.leaves(after)[0], jax.tree.leaves(stats)[0])
  for epoch in (2, 7):  # After its first epoch the teacher is in eval mode, as in [S].
    logits, after = steps.teacher_logits(config, forward, teacher, state.ema, jnp.asarray(epoch),
                                         _inputs(config, x, x_adv))
    chex.assert_trees_all_close((logits, after), (expected_eval, stats), rtol=1e-4, atol=1e-5)
  config.rebat.teacher_bn = 'eval'  # Ours: running statistics in every epoch.
  logits, after = steps.teacher_logits(config, forward, teacher, state.ema, jnp.asarray(1), _inputs(config, x, x_adv))
  chex.assert_trees_all_close((logits, after), (expected_eval, stats), rtol=1e-4, atol=1e-5)

  # A step of epoch 1 averages the nudged statistics: the average's BN statistics leave the eval-mode run's.
  step = jax.jit(steps.make_train_step(config, forward, steps_per_epoch=1))
  first, _ = step(state, batch, jax.random.key(0))
  ours, _ = step(first, batch, jax.random.key(0))
  config.rebat.teacher_bn = 'official'
  step = jax.jit(steps.make_train_step(config, forward, steps_per_epoch=1))
  official, _ = step(first, batch, jax.random.key(0))
  assert not np.allclose(jax.tree.leaves(official.ema['batch_stats'])[0],
                         jax.tree.leaves(ours.ema['batch_stats'])[0])


def test_config_strings_give_the_sotas_recipe():
  from configs import prn18
  from rpat_jax.config import validation
  from rpat_jax.config import threats
  config = threats.resolve(prn18.get_config('rpat_plus_plus'))
  assert (config.method, config.rpat.enabled, config.ema.enabled, config.ema.start_epoch) == (
      'rpat_plus_plus', False, True, 105)
  assert (config.schedule.name, config.data.pad_mode, config.model.normalize, config.attack.bn_mode) == (
      'rebat_piecewise', 'reflect', True, 'train')
  config.data.name = 'synthetic'  # CIFAR-10 is not prepared here.
  validation.validate(config, device_count=1)
  config.ema.enabled = False
  with pytest.raises(validation.ConfigError, match='ema.enabled'):
    validation.validate(config, device_count=1)


@pytest.mark.parametrize('method', ['rebat', 'rpat_plus_plus'])
def test_a_non_finite_teacher_term_is_left_out_with_its_gradient(method):
  """[S] adds the teacher term only when its value is below 1e10. An infinite teacher logit must leave the
  cross-entropy step (the term's NaN gradient must not reach the weights)."""
  overrides = {'method': method, 'rpat.enabled': False, 'ema.enabled': True, 'ema.start_epoch': 0}
  _, _, state, _ = _setup(**overrides)
  ema_params = jax.tree.map(lambda p: p, state.ema['params'])
  ema_params['Head_0']['head']['bias'] = jnp.full_like(ema_params['Head_0']['head']['bias'], jnp.inf)
  broken = state.replace(ema={**state.ema, 'params': ema_params})
  guarded, metrics = _run(overrides, state=broken)
  assert float(metrics['teacher_loss']) == 0.0 and np.isfinite(float(metrics['loss']))
  ce_only, ce_metrics = _run({**overrides, 'rebat.beta': 0.0})  # A finite teacher with no weight.
  np.testing.assert_allclose(metrics['loss'], ce_metrics['loss'], rtol=1e-6)
  chex.assert_trees_all_close(guarded.params, ce_only.params, atol=1e-6, rtol=0)
