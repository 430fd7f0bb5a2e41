"""The motivating diagnostic against answers known in closed form, and its bookkeeping."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rpat_jax import perception

THREAT = ml_collections.ConfigDict({'norm': 'linf', 'eps': 8 / 255, 'step_size': 2 / 255})


def _problem(n=24):
  weights = jax.random.normal(jax.random.key(0), (8 * 8 * 3, 10)) * 0.5
  x = np.asarray(jax.random.uniform(jax.random.key(1), (n, 8, 8, 3)))
  linear = lambda images: images.reshape(images.shape[0], -1) @ weights
  y = np.array(jnp.argmax(linear(x), -1))
  y[::3] = (y[::3] + 1) % 10  # Some points wrong already: both groups are populated.
  return linear, x, y


@pytest.mark.parametrize('kind', ['pgd', 'random'])
def test_a_linear_logit_function_is_linear_along_the_segment(kind):
  linear, x, y = _problem()
  result = perception.diagnose(linear, x, y, THREAT, kind=kind, batch_size=8)
  groups = result['groups']
  assert groups['success']['count'] + groups['failure']['count'] == groups['all']['count'] == len(x)
  for name, group in groups.items():
    if not group['count']:
      continue
    np.testing.assert_allclose(group['d_first'], group['d_full'] / 4, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(group['d_second'], group['d_full'] / 4, rtol=1e-4, err_msg=name)
    assert group['profile']['distance'][0] == 0.0 and group['linearity_error'] < 1e-4
  weighted = sum(groups[g]['count'] * groups[g]['d_full'] for g in ('success', 'failure')) / len(x)
  np.testing.assert_allclose(groups['all']['d_full'], weighted, rtol=1e-5)
  assert result['perturbed_acc'] == groups['success']['count'] / len(x)
  assert perception.inconsistencies(result) == []
  broken = json.loads(json.dumps(result))
  broken['n_examples'] += 1
  broken['groups']['all']['d_first'] *= 1.01
  broken['groups']['success']['profile']['distance'][0] = 0.5
  assert [p.split(' ')[0] for p in perception.inconsistencies(broken)] == ['group', 'success', 'all.d_first', 'success:']


def test_a_curved_response_and_the_official_averaging():
  linear, x, y = _problem()
  curved = lambda images: jnp.tanh(linear(images)) * 3
  x_perturbed = np.clip(x + 0.3 * np.sign(np.random.default_rng(0).normal(size=x.shape)), 0, 1).astype(np.float32)
  exact = perception.diagnose(curved, x, y, THREAT, kind='pgd', batch_size=8, x_perturbed=x_perturbed)
  assert exact['groups']['all']['linearity_error'] > 1e-3
  assert exact['groups']['all']['d_first'] != pytest.approx(exact['groups']['all']['d_second'], rel=1e-3)
  one_batch = perception.diagnose(curved, x, y, THREAT, kind='pgd', batch_size=len(x), x_perturbed=x_perturbed,
                                  official_averaging=True)  # One batch: the official weighting is exact.
  for name in perception.GROUPS:
    assert one_batch['groups'][name]['d_full'] == pytest.approx(exact['groups'][name]['d_full'], rel=1e-6)
  columns = {'d_full': np.array([1.0, 3.0, 5.0, 7.0]), 'd_first': np.ones(4), 'd_second': np.ones(4),
             'profile': np.ones((4, 2)), 'clean_correct': np.ones(4, bool),
             'perturbed_correct': np.array([True, False, True, True])}
  official = perception.summarise(columns, alphas=(0.0, 1.0), official_averaging=True, official_batch=2)
  # Batches {1, 3}, {5, 7}: success means 1 and 6, each weighted by 2 points: 3.5 (exact: 13/3).
  assert official['groups']['success']['d_full'] == pytest.approx(3.5)
  assert np.isnan(official['groups']['failure']['d_full'])  # The second batch has no failure: NaN, as there.
  assert perception.summarise(columns, alphas=(0.0, 1.0))['groups']['success']['d_full'] == pytest.approx(13 / 3)


def test_perturbations_stay_in_the_box_and_do_not_depend_on_the_batch():
  linear, x, y = _problem(12)
  for kind in ('pgd', 'random'):
    a = perception.perturb(linear, x, y, THREAT, kind=kind, seed=0, batch_size=12, steps=3)
    b = perception.perturb(linear, x, y, THREAT, kind=kind, seed=0, batch_size=4, steps=3)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(a - x).max() <= 8 / 255 + 1e-6 and a.min() >= 0 and a.max() <= 1
  with pytest.raises(ValueError, match='allowed: pgd, random'):
    perception.perturb(linear, x, y, THREAT, kind='fgsm', seed=0, batch_size=4)


def test_the_binary_writes_its_json_and_figure_for_a_run(tmp_path, capsys, monkeypatch):
  pytest.importorskip('matplotlib')
  import json  # pylint: disable=import-outside-toplevel
  from helpers import one_line_error  # pylint: disable=import-outside-toplevel
  from helpers import tiny_config  # pylint: disable=import-outside-toplevel
  from rpat_jax import train  # pylint: disable=import-outside-toplevel
  from rpat_jax.perception import __main__ as binary  # pylint: disable=import-outside-toplevel
  train.train_and_evaluate(tiny_config(epochs=1), str(tmp_path))
  result = binary.run(str(tmp_path), checkpoint='last', kind='random', n_examples=32, batch_size=16)
  written = json.loads((tmp_path / 'eval' / 'perception_random.json').read_text())
  assert written['groups']['all']['count'] == 32 == written['n_examples'] and written['checkpoint_step'] == 1
  assert written['groups'] == json.loads(json.dumps(result['groups']))
  assert (tmp_path / 'eval' / 'perception_random.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  line = one_line_error(binary, ['perception', f'--workdir={tmp_path / "none"}'], monkeypatch, capsys)
  assert 'none/config.json does not exist' in line
