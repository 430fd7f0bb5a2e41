"""The evaluation and perception binaries on a K-seed run: one seed of the stacked checkpoint is that seed's
single run, results go per seed, and a seed the run did not train is refused in one line. The runs are
written here without training: a K=3 initial state saved as epochs 1 and 2."""

import json
import os

import pytest

from helpers import one_line_error
from helpers import tiny_config
from rpat_jax import evaluate, experiment, seeds
from rpat_jax.evaluate import __main__ as evaluate_binary
from rpat_jax.perception import __main__ as perception_binary
from rpat_jax.run import checkpointing, saved_config

CHEAP = dict(n_examples=32, aa_version='custom', attack_names=['apgd-ce'], batch_size=32,
             aa_options={'apgd-ce': {'n_iter': 3, 'n_restarts': 1}})


def _write_run(workdir, config, state, metas):
  """A run directory as training leaves it: config.json, metrics.jsonl and the epochs' checkpoints
  (`metas`: epoch -> meta, each saved as the best)."""
  checkpoints = checkpointing.Checkpoints(workdir, keep=2)
  for epoch, meta in sorted(metas.items()):
    checkpoints.save(epoch, state, dict(meta, epoch=epoch), is_best=True)
  checkpoints.close()
  saved_config.write(config, workdir)
  rows = [{'epoch': e, 'seed': s, 'step': 4 * e, 'test_pgd_acc': 0.1} for e in metas for s in seeds.values(config)]
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(row) + '\n' for row in rows))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(config, workdir) of a K=3 run (seeds 5, 6, 7; seed 5's best epoch is 1, the others' 2) and of a single
  run holding seed 6's state alone."""
  stacked = tiny_config(seed=5, seeds=3)
  state = experiment.create(stacked).init_state()
  workdir = str(tmp_path_factory.mktemp('seeds'))
  _write_run(workdir, stacked, state, {
      1: {'best_epoch': [1, 1, 1], 'best_pgd_acc': [0.1, 0.1, 0.1]},
      2: {'best_epoch': [1, 2, 2], 'best_pgd_acc': [0.1, 0.2, 0.2]}})
  single = tiny_config(seed=6)
  single_dir = str(tmp_path_factory.mktemp('single'))
  _write_run(single_dir, single, seeds.select(state, 1), {2: {'best_epoch': 2, 'best_pgd_acc': 0.2}})
  return (stacked, workdir), (single, single_dir)


def test_a_seed_is_restored_from_the_stacked_state_with_its_own_best_epoch(runs):
  (stacked, workdir), _ = runs
  restored = evaluate.restore_checkpoint(stacked, workdir, checkpoint='best')
  epochs = [evaluate.checkpoint_variables(*restored, seed_index=i)[3] for i in range(3)]
  assert epochs == [1, 2, 2]  # best/: slice i is seed i's best epoch.
  assert evaluate.restore_variables(stacked, workdir, checkpoint='last', seed_index=0)[3] == 2
  for index in (None, 3):
    with pytest.raises(ValueError, match='a run of 3 seeds has one per seed'):
      evaluate.checkpoint_variables(*restored, seed_index=index)


def test_evaluating_one_seed_equals_evaluating_its_single_run(runs):
  (stacked, workdir), (single, single_dir) = runs
  results, = evaluate.run_seeds(stacked, workdir, seeds=[6], **CHEAP)
  alone = evaluate.run(single, single_dir, **CHEAP)
  for key in ('clean_acc', 'pgd20_acc', 'cw20_acc', 'aa_acc', 'weights_digest', 'per_attack', 'checkpoint_step'):
    assert results[key] == alone[key], key
  assert results['train_seed'] == 6 and 'train_seed' not in alone
  assert [name for name in os.listdir(os.path.join(workdir, 'eval')) if name.startswith('seed_')] == ['seed_6']
  saved = json.load(open(os.path.join(workdir, 'eval', 'seed_6', 'results.json')))
  assert saved['train_seed'] == 6 and saved['aa_acc'] == results['aa_acc']
  assert os.path.exists(os.path.join(workdir, 'eval', 'seed_6', 'aa_state_best.npz'))  # Its own resume.
  assert 'training seed 6' in open(os.path.join(workdir, 'eval', 'seed_6', 'results.md')).read()
  assert os.path.exists(os.path.join(single_dir, 'eval', 'results.json'))  # A single run: where it was.
  with pytest.raises(ValueError, match='a run of 3 seeds has a result per seed'):
    evaluate.run(stacked, workdir, **CHEAP)


def test_perception_diagnoses_every_seed_into_its_directory(runs):
  (stacked, workdir), (_, single_dir) = runs
  results = perception_binary.run_seeds(workdir, kind='random', n_examples=16, batch_size=16)
  assert [r['train_seed'] for r in results] == [5, 6, 7] and [r['checkpoint_step'] for r in results] == [1, 2, 2]
  for seed, result in zip((5, 6, 7), results):
    written = json.load(open(os.path.join(workdir, 'eval', f'seed_{seed}', 'perception_random.json')))
    assert written['weights_digest'] == result['weights_digest'] and written['train_seed'] == seed
  alone = perception_binary.run(single_dir, kind='random', n_examples=16, batch_size=16)
  assert alone['groups'] == results[1]['groups'] and alone['weights_digest'] == results[1]['weights_digest']


@pytest.mark.parametrize('binary', [evaluate_binary, perception_binary])
def test_a_seed_the_run_did_not_train_is_one_line(runs, binary, capsys, monkeypatch):
  (_, workdir), (_, single_dir) = runs
  for where, value, expected in ((workdir, '6,9', '--seeds=6,9: the run trained seeds 5, 6, 7, not 9'),
                                 (single_dir, '5', '--seeds=5: the run trained seeds 6, not 5'),
                                 (workdir, '6,x', '--seeds=6,x; allowed: integers'),
                                 (workdir, '6,6', '--seeds=6,6: a value given twice')):
    line = one_line_error(binary, ['binary', f'--workdir={where}', f'--seeds={value}'], monkeypatch, capsys)
    assert expected in line, line
  assert not os.path.exists(os.path.join(single_dir, 'eval', 'seed_5'))


def test_a_config_naming_other_seeds_than_the_run_is_refused_before_restoring(runs):
  """--config given to evaluate is the run's description: another K would misread the checkpoint's seed axis,
  another first seed would file the results under seeds the run did not train."""
  (stacked, workdir), _ = runs
  for changes, expected in (({}, 'seed=0, seeds=1 but the run'), ({'seeds': 3}, 'seed=0, seeds=3 but the run')):
    with pytest.raises(saved_config.ConfigChangeError) as error:
      evaluate.run_seeds(tiny_config(**changes), workdir, checkpoint='last', **CHEAP)
    assert expected in str(error.value) and 'trained seed=5, seeds=3' in str(error.value), error.value
    assert '\n' not in str(error.value)
  assert not os.path.exists(os.path.join(workdir, 'eval', 'seed_0'))
  saved_config.check_seeds(tiny_config(seed=1), runs[1][1])  # A single run's seed changes nothing read.
  with pytest.raises(saved_config.ConfigChangeError):
    saved_config.check_seeds(tiny_config(seed=6, seeds=2), runs[1][1])
