"""K seeds in one program (`config.seeds`): each seed draws what its single run draws, a killed K-seed run
resumes to the uninterrupted one, the best epoch is chosen per seed, and bad input is one line."""

import functools
import json
import os
import signal

import chex
import jax
import numpy as np
import pytest

from helpers import metric_rows
from helpers import tiny_config
from helpers import wrap_steps
from rpat_jax import experiment as experiment_lib
from rpat_jax import seeds
from rpat_jax import train
from rpat_jax.config import validation
from rpat_jax.run import checkpointing
from rpat_jax.run import metrics_log
from rpat_jax.run import preemption
from rpat_jax.run import saved_config


@functools.lru_cache(maxsize=None)
def _single_first_step(seed):
  """A single run's first step, shared by both forms' tests."""
  return _first_step(tiny_config(seed=seed))


def _first_step(config):
  experiment = experiment_lib.create(config)
  state = experiment.init_state()
  images, labels = experiment.train_data()
  order = train.epoch_order(experiment)(state, 0)
  initial = jax.device_get(state)
  state, metrics = train.jit_epoch_step(experiment)(state, images, labels, order)
  return initial, np.asarray(order), state, metrics


@pytest.mark.parametrize('compute', ['unroll', 'vmap'])
def test_each_seed_draws_what_its_single_run_draws(compute):
  """seeds=2 from seed 3 against the single runs of seeds 3 and 4: the same initial state and epoch order
  bit for bit, and after one step the same parameters to float32 rounding (the programs sum in other
  orders; docs/training.md says why the runs then drift apart)."""
  initial, order, state, metrics = _first_step(tiny_config(seed=3, seeds=2, seed_compute=compute))
  assert metrics['loss'].shape == (2,) and order.shape == (2, 256)
  for index, seed in enumerate((3, 4)):
    single_initial, single_order, single, single_metrics = _single_first_step(seed)
    parts = lambda state: (state.params, state.batch_stats, state.opt_state, state.rng, state.step)
    chex.assert_trees_all_equal(parts(seeds.select(initial, index)), parts(single_initial))
    np.testing.assert_array_equal(order[index], single_order)
    for part in ('params', 'opt_state', 'batch_stats'):
      chex.assert_trees_all_close(seeds.select(getattr(state, part), index), getattr(single, part),
                                  rtol=1e-5, atol=1e-7)
    for key, value in single_metrics.items():
      np.testing.assert_allclose(metrics[key][index], value, rtol=1e-5, err_msg=key)


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

  assert sorted(os.listdir(tmp_path / 'run' / 'tensorboard')) == [f'seed_{seed}' for seed in range(4)]  # No empty run.
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
    ({'seed_sharding': 'seeds', 'batch_size': 60}, 8, 'batch_size=60 (global) is not divisible by the 8 devices'),
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
  validation.validate(tiny_config(seeds=8, batch_size=60), 4, data_on_disk=False)  # 'auto': whole seeds.


@pytest.mark.parametrize('count, devices, layout', [(1, 8, 'batch'), (8, 1, 'batch'), (8, 4, 'seeds'),
                                                    (6, 4, 'batch'), (16, 16, 'seeds')])
def test_auto_places_whole_seeds_where_the_devices_divide_them(count, devices, layout):
  assert seeds.layout(tiny_config(seeds=count), devices) == layout


def test_resuming_with_another_seed_count_is_refused_and_old_runs_read_as_one_seed(tmp_path):
  saved_config.write(tiny_config(seeds=4), tmp_path)
  with pytest.raises(saved_config.ConfigChangeError, match='seeds: 4 -> 2'):
    saved_config.check_resume(tiny_config(seeds=2), tmp_path)
  recorded = json.loads((tmp_path / saved_config.FILE).read_text())
  for key in ('seeds', 'seed_sharding', 'seed_compute'):
    del recorded[key]
  (tmp_path / saved_config.FILE).write_text(json.dumps(recorded))  # A run recorded before the keys existed.
  assert saved_config.check_resume(tiny_config(), tmp_path)
  assert saved_config.check_resume(tiny_config(seed_sharding='seeds', seed_compute='vmap'), tmp_path)  # Layout.
  assert saved_config.read(tmp_path).seeds == 1


def test_a_non_finite_metric_names_its_seed():
  metrics = [{'loss': np.float32([1.0, np.nan, 2.0]), 'acc': np.float32([0.1, 0.2, np.inf])}]
  assert train._first_non_finite(metrics, 7, [3, 4, 5]) == 'step 7 of seed 4, 5: acc, loss'
  assert jax.tree.leaves(metrics)  # The metrics are left as they were.


def test_the_progress_line_shows_the_seeds_range():
  metrics = {'loss': np.float32([1.52, 1.61, 1.57]), 'acc': np.float32([0.281, 0.31, 0.3])}
  assert metrics_log.seed_ranges(metrics) == ', 3 seeds: loss 1.52-1.61, acc 28.1-31.0%'
  assert metrics_log.seed_ranges({'loss': np.float32(1.5), 'acc': np.float32(0.3)}) == ''
