"""The AutoAttack ensemble: attack order and bookkeeping, resume, batch independence, and the whole
standard run against the official `pyautoattack` on the same network and points."""

import time

import numpy as np
import pytest

import aa_reference as ref
from rpat_jax.autoattack import ensemble

SMALL = {'apgd-ce': {'n_iter': 10}, 'apgd-t': {'n_iter': 10, 'n_target_classes': 3},
         'fab-t': {'n_iter': 10, 'n_target_classes': 3}, 'square': {'n_queries': 100}}


@pytest.fixture(scope='module')
def problem():
  weights = ref.make_weights()
  x, y = ref.make_points(100, weights=weights)
  return weights, ref.jax_logits_fn(weights), x, y


def test_versions_and_attack_names_are_checked_before_any_work():
  assert ensemble.resolve_attacks('standard', None) == ('apgd-ce', 'apgd-t', 'fab-t', 'square')
  assert ensemble.resolve_attacks('custom', ['square', 'apgd-ce']) == ('square', 'apgd-ce')
  assert ensemble.resolve_attacks('plus', None) == ('apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t')
  for version, attacks, message in (('rand', None, 'EOT'), ('custom', None, 'needs attacks'),
                                    ('custom', ['apgd-x'], 'allowed'), ('standard', ['apgd-ce'], 'custom'),
                                    ('fast', None, 'allowed: standard, plus, custom')):
    with pytest.raises(ValueError, match=message):
      ensemble.resolve_attacks(version, attacks)
  with pytest.raises(ValueError, match='allowed: n_iter'):
    ensemble.resolve_options('standard', ['apgd-ce'], {'apgd-ce': {'steps': 3}})


def test_each_version_runs_with_the_official_hyperparameters():
  restarts = lambda version, name: ensemble.resolve_options(version, [name])[name]['n_restarts']
  assert restarts('standard', 'apgd-ce') == 1 and restarts('plus', 'apgd-ce') == 5
  assert restarts('custom', 'apgd-ce') == 5 and restarts('plus', 'fab') == 5  # The official constructor's.
  assert restarts('plus', 'apgd-t') == 1
  options = ensemble.resolve_options('standard', ensemble.VERSIONS['standard'], {'square': {'n_queries': 7}})
  assert options['square'] == {'n_queries': 7, 'p_init': 0.8}
  assert options['fab-t']['n_target_classes'] == 9 and options['apgd-t']['n_iter'] == 100


def test_plus_version_runs_every_attack_in_order(problem):
  _, logits_fn, x, y = problem
  tiny = {'apgd-ce': {'n_iter': 5, 'n_restarts': 2}, 'apgd-dlr': {'n_iter': 5, 'n_restarts': 2},
          'fab': {'n_iter': 5, 'n_restarts': 2}, 'square': {'n_queries': 20},
          'apgd-t': {'n_iter': 5, 'n_target_classes': 2}, 'fab-t': {'n_iter': 5, 'n_target_classes': 2}}
  result = ensemble.evaluate(logits_fn, x[:40], y[:40], eps=8 / 255, version='plus', batch_size=40,
                             attack_options=tiny)
  assert list(result['per_attack']) == list(ensemble.VERSIONS['plus'])
  assert result['robust_acc'] < result['clean_acc'] and result['max_perturbation'] <= 8 / 255 + 1e-6


def test_bookkeeping_counts_every_point_and_keeps_the_adversarials(problem):
  _, logits_fn, x, y = problem
  result = ensemble.evaluate(logits_fn, x, y, eps=2 / 255, batch_size=64, attack_options=SMALL)
  predicted = np.asarray(logits_fn(result['x_adv'])).argmax(1)
  clean_correct = np.asarray(logits_fn(x)).argmax(1) == y
  assert result['clean_acc'] == pytest.approx(clean_correct.mean()) and result['clean_acc'] == pytest.approx(0.9)
  np.testing.assert_array_equal(result['robust'], predicted == y)  # A fresh forward pass decides.
  np.testing.assert_array_equal(result['y_adv'], predicted)
  assert not (result['robust'] & ~clean_correct).any()
  assert result['robust_acc'] == pytest.approx(result['robust'].mean())  # Over all N points.
  accuracies = list(result['per_attack'].values())
  assert list(result['per_attack']) == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
  assert accuracies == sorted(accuracies, reverse=True) and accuracies[-1] == result['robust_acc']
  np.testing.assert_array_equal(result['x_adv'][result['robust']], x[result['robust']])
  assert result['max_perturbation'] <= 2 / 255 + 1e-6 and result['nan_count'] == 0
  assert set(result['flags']) == {'randomized', 'range_output', 'dynamic', 'n_classes', 'zero_gradients',
                                  'square_success'}
  assert not any(flag['raised'] for flag in result['flags'].values())


def test_flags_do_not_depend_on_the_batch_size(problem):
  _, logits_fn, x, y = problem
  options = {'apgd-ce': {'n_iter': 10, 'n_restarts': 1}, 'square': {'n_queries': 50}}
  run = lambda batch_size: ensemble.evaluate(logits_fn, x, y, eps=1 / 255, version='custom',
                                             attacks=['apgd-ce', 'square'], batch_size=batch_size,
                                             attack_options=options)
  np.testing.assert_array_equal(run(100)['robust'], run(32)['robust'])


def test_an_interrupted_evaluation_resumes_where_it_stopped(problem, tmp_path, monkeypatch):
  _, logits_fn, x, y = problem
  kwargs = dict(eps=1 / 255, version='custom', attacks=['apgd-ce', 'apgd-t'], batch_size=32,
                attack_options={'apgd-ce': {'n_iter': 10, 'n_restarts': 1},
                                'apgd-t': {'n_iter': 10, 'n_target_classes': 3}})
  whole = ensemble.evaluate(logits_fn, x, y, **kwargs)
  state_path = str(tmp_path / 'state.npz')
  real_make_attack = ensemble.make_attack

  def counting(interrupt_at=None):
    calls = []

    def make_attack(name, *args, **kw):
      attack = real_make_attack(name, *args, **kw)

      def run(*inputs):
        calls.append(name)
        if (name, calls.count(name)) == interrupt_at:
          raise KeyboardInterrupt
        return attack(*inputs)
      return run
    return make_attack, calls

  make_attack, _ = counting(interrupt_at=('apgd-t', 2))  # In the second chunk of the second attack.
  monkeypatch.setattr(ensemble, 'make_attack', make_attack)
  with pytest.raises(KeyboardInterrupt):
    ensemble.evaluate(logits_fn, x, y, state_path=state_path, **kwargs)
  make_attack, resumed_calls = counting()
  monkeypatch.setattr(ensemble, 'make_attack', make_attack)
  resumed = ensemble.evaluate(logits_fn, x, y, state_path=state_path, **kwargs)
  after_first_attack = int(round(whole['per_attack']['apgd-ce'] * len(x)))
  assert after_first_attack > 32  # So apgd-t has at least two chunks.
  # Finished work is not redone: not apgd-ce, not the first chunk of apgd-t.
  assert resumed_calls == ['apgd-t'] * (-(-after_first_attack // 32) - 1)
  np.testing.assert_array_equal(resumed['robust'], whole['robust'])
  np.testing.assert_array_equal(resumed['x_adv'], whole['x_adv'])
  assert resumed['per_attack'] == whole['per_attack']

  def starts_afresh(message, **changes):
    """The state file is not resumed: the first attack runs its first chunk again, and one line says why."""
    lines = []
    make_attack, _ = counting(interrupt_at=('apgd-ce', 1))
    monkeypatch.setattr(ensemble, 'make_attack', make_attack)
    with pytest.raises(KeyboardInterrupt):
      ensemble.evaluate(logits_fn, x, y, state_path=state_path, log=lines.append, **dict(kwargs, **changes))
    assert [line for line in lines if message in line and state_path in line], lines

  starts_afresh('written for other eps; starting afresh', eps=2 / 255)
  starts_afresh('written for other weights; starting afresh', state_binding='weights 0123')  # Other weights.
  with open(state_path, 'r+b') as f:  # A damaged file: named, and started afresh.
    f.truncate(100)
  starts_afresh('cannot be read')


def test_standard_run_agrees_with_the_official_autoattack(problem):
  torch = pytest.importorskip('torch')
  official_aa = pytest.importorskip('pyautoattack')
  torch.set_num_threads(1)  # pytest -n 2 runs two workers on two cores.
  weights, logits_fn, x, y = problem
  eps, n_iter, targets, queries = 1 / 255, 20, 3, 300
  net = ref.torch_model(weights)
  official = official_aa.AutoAttack(net, eps=eps, norm='Linf', seed=0, version='standard')
  for attack in (official.apgd, official.apgd_targeted):
    attack.n_iter = n_iter
    attack.n_iter_2, attack.n_iter_min, attack.size_decr = (max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1),
                                                            max(int(0.03 * n_iter), 1))
  official.apgd_targeted.n_target_classes = targets
  official.fab.n_iter, official.fab.n_target_classes = n_iter, targets
  official.square.n_queries = queries
  started = time.time()
  x_official, _ = official.run_standard_evaluation(*ref.to_torch(x, y), batch_size=100)
  official_seconds = time.time() - started
  robust_official = np.asarray(logits_fn(ref.to_nhwc(x_official))).argmax(1) == y
  options = {'apgd-ce': {'n_iter': n_iter}, 'apgd-t': {'n_iter': n_iter, 'n_target_classes': targets},
             'fab-t': {'n_iter': n_iter, 'n_target_classes': targets}, 'square': {'n_queries': queries}}
  ours = ensemble.evaluate(logits_fn, x, y, eps=eps, batch_size=100, attack_options=options)
  agreement = (ours['robust'] == robust_official).mean()
  print(f'standard AA, 100 points: robust official {robust_official.mean():.3f} ({official_seconds:.1f} s), '
        f'ours {ours["robust_acc"]:.3f} ({ours["seconds"]:.1f} s), agreement {agreement:.3f}')
  assert 0.2 < robust_official.mean() < 0.8
  assert agreement >= 0.95
  assert abs(ours['robust_acc'] - robust_official.mean()) <= 0.02
