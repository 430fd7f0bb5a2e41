"""K seeds in one program (`config.seeds`): each seed is its single run, a killed K-seed run resumes to the
uninterrupted one, the best epoch is chosen per seed, and bad input is one line."""

import json
import os
import signal

import chex
import jax
import numpy as np
import pytest

from helpers import metric_rows
from helpers import tiny_config
from helpers import xla_optimized
from helpers import wrap_steps
from rpat_jax import experiment as experiment_lib
from rpat_jax import seeds
from rpat_jax import train
from rpat_jax.config import validation
from rpat_jax.run import checkpointing
from rpat_jax.run import preemption
from rpat_jax.run import saved_config


def _seed_rows(workdir, seed):
  return [{k: v for k, v in row.items() if k != 'seed'} for row in metric_rows(workdir) if row['seed'] == seed]


@pytest.mark.slow  # About a minute: three runs compiled with XLA's optimisations, as a real run is.
def test_each_seed_of_a_k_seed_run_is_its_single_run(tmp_path):
  """seeds=2 from seed 3 against the single runs of seeds 3 and 4: the same parameters, optimiser state and
  metric rows, bit for bit (on a CPU `seed_compute='auto'` unrolls the seeds: a single run's arithmetic). With
  XLA's optimisations off, as the rest of the suite runs, the two programs round differently."""
  with xla_optimized():
    state = train.train_and_evaluate(tiny_config(seed=3, seeds=2), str(tmp_path / 'k2'))
  assert seeds.compute(tiny_config(seeds=2)) == 'unroll'
  rows = metric_rows(tmp_path / 'k2')
  assert [(row['epoch'], row['seed']) for row in rows] == [(1, 3), (1, 4), (2, 3), (2, 4)]
  for index, seed in enumerate((3, 4)):
    with xla_optimized():
      single = train.train_and_evaluate(tiny_config(seed=seed), str(tmp_path / f's{seed}'))
    chex.assert_trees_all_equal(seeds.select(state.params, index), single.params)
    chex.assert_trees_all_equal(seeds.select(state.opt_state, index), single.opt_state)
    chex.assert_trees_all_equal(seeds.select(state.batch_stats, index), single.batch_stats)
    assert _seed_rows(tmp_path / 'k2', seed) == metric_rows(tmp_path / f's{seed}')


def test_vectorised_seeds_match_their_single_runs_to_rounding():
  """`seed_compute='vmap'` sums in another order: one step agrees with the single runs to float32 rounding."""
  def one_step(config):
    experiment = experiment_lib.create(config)
    state = experiment.init_state()
    images, labels = experiment.train_data()
    order = train.epoch_order(experiment)(state, 0)
    return train.jit_epoch_step(experiment)(state, images, labels, order)

  state, metrics = one_step(tiny_config(seed=3, seeds=2, seed_compute='vmap'))
  assert metrics['loss'].shape == (2,)
  for index, seed in enumerate((3, 4)):
    single, single_metrics = one_step(tiny_config(seed=seed))
    chex.assert_trees_all_close(seeds.select(state.params, index), single.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics['loss'][index], single_metrics['loss'], rtol=1e-5)


@pytest.mark.slow
def test_a_killed_k_seed_run_resumes_to_the_uninterrupted_one_with_the_best_per_seed(tmp_path, monkeypatch):
  """seeds=4, SIGTERM mid-epoch 2, then the same command: the same state and rows as a straight run. The
  best checkpoint holds each seed's own best epoch (by test PGD accuracy), its meta a list per seed."""
  config = tiny_config(seeds=4, epochs=3)
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  workdir = str(tmp_path / 'run')
  wrap_steps(monkeypatch, lambda n: n == 6 and os.kill(os.getpid(), signal.SIGTERM))
  with pytest.raises(preemption.Preempted, match='at step 6'):
    train.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  resumed = train.train_and_evaluate(config, workdir)
  chex.assert_trees_all_equal(resumed.params, straight.params)
  chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
  assert metric_rows(workdir) == metric_rows(tmp_path / 'straight')

  rows = metric_rows(workdir)
  best_epochs = [max((row for row in rows if row['seed'] == seed), key=lambda row: row['test_pgd_acc'])['epoch']
                 for seed in seeds.values(config)]  # max() keeps the first of equal accuracies, as the run.
  best_dir = tmp_path / 'run' / 'best'
  saved = sorted(int(name) for name in os.listdir(best_dir) if name.isdigit())
  meta = json.loads((best_dir / str(saved[-1]) / 'meta' / 'metadata').read_text())
  assert meta['best_epoch'] == best_epochs and len(saved) <= 2
  best, _ = checkpointing.Checkpoints(workdir, 1, read_only=True).restore(straight, which='best')
  for index, epoch in enumerate(best_epochs):
    at_epoch, _ = checkpointing.Checkpoints(workdir, 3, read_only=True).restore(straight, epoch=epoch)
    chex.assert_trees_all_equal(seeds.select(best.params, index), seeds.select(at_epoch.params, index))


@pytest.mark.parametrize('changes, devices, message', [
    ({'seeds': 0}, 1, 'seeds=0 must be a positive integer'),
    ({'seeds': 2, 'batch_size': 60}, 8, 'batch_size=60 (per seed, global) is not divisible by the 8 devices'),
    ({'seeds': 6, 'seed_sharding': 'seeds'}, 4, 'seeds=6 with seed_sharding=seeds is not a multiple of the 4 '
     'devices'),
    ({'seed_compute': 'loop'}, 1, "seed_compute='loop' is not allowed; allowed: auto, vmap, unroll"),
])
def test_bad_seed_settings_are_one_line(changes, devices, message):
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(tiny_config(**changes), devices, data_on_disk=False)
  assert message in str(error.value) and '\n' not in str(error.value)


def test_whole_seeds_per_device_need_no_batch_split():
  validation.validate(tiny_config(seeds=8, seed_sharding='seeds', batch_size=60), 8, data_on_disk=False)


def test_resuming_with_another_seed_count_is_refused_and_old_runs_read_as_one_seed(tmp_path):
  saved_config.write(tiny_config(seeds=4), tmp_path)
  with pytest.raises(saved_config.ConfigChangeError, match='seeds: 4 -> 2'):
    saved_config.check_resume(tiny_config(seeds=2), tmp_path)
  recorded = json.loads((tmp_path / saved_config.FILE).read_text())
  for key in ('seeds', 'seed_sharding', 'seed_compute'):
    del recorded[key]
  (tmp_path / saved_config.FILE).write_text(json.dumps(recorded))  # A run recorded before the keys existed.
  assert saved_config.check_resume(tiny_config(), tmp_path)
  assert saved_config.read(tmp_path).seeds == 1


def test_a_non_finite_metric_names_its_seed():
  metrics = [{'loss': np.float32([1.0, np.nan, 2.0]), 'acc': np.float32([0.1, 0.2, np.inf])}]
  assert train._first_non_finite(metrics, 7, [3, 4, 5]) == 'step 7 of seed 4, 5: acc, loss'
  assert jax.tree.leaves(metrics)  # The metrics are left as they were.
