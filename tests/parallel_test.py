"""Data parallel on many devices and processes: same results as one device, one-line errors, no hangs.

Device counts are fixed when JAX starts, so the multi-device checks run in subprocesses with simulated
CPU devices (XLA_FLAGS) and, for several processes, through launch/local.sh (jax.distributed over gloo).
Float sums over devices run in another order than on one device, and PGD's sign steps turn a 1e-7
difference of a near-zero gradient into a flipped pixel: parameters agree to 1e-3 after 3 steps, while
evaluations (BN eval mode, per-point randomness) agree point by point.
"""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpat_jax.sharding import distributed
from rpat_jax.sharding import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'multidevice_worker.py')
TINY = ['--config=configs/smoke.py', '--config.model.width=8', '--config.data.synthetic.num_train=256',
        '--config.data.synthetic.num_test=64', '--config.data.synthetic.image_size=16', '--config.batch_size=64',
        '--config.attack.steps=2', '--config.eval.batch_size=32', '--config.eval.pgd_steps=2',
        '--config.eval.num_examples=0', '--config.log.progress=none', '--config.schedule.name=constant']


def _env(devices: int):
  flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'.strip()
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return env


def _worker(mode: str, devices: int, tmp_path) -> dict:
  out = str(tmp_path / f'{mode}_{devices}.npz')
  subprocess.run([sys.executable, WORKER, mode, out], check=True, env=_env(devices), cwd=ROOT,
                 capture_output=True, timeout=300)
  with np.load(out) as saved:
    return {key: saved[key] for key in saved}


def test_gather_rows_picks_the_chosen_rows_of_a_row_sharded_dataset():
  mesh = parallel.make_mesh()
  row_ids = parallel.padded_rows(10, 4)
  assert row_ids.tolist() == list(range(10)) + [parallel.PADDING] * 2
  images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
  labels = np.arange(10, dtype=np.int32) + 100
  fetched = []

  def fetch(rows):
    fetched.append(rows)
    return images[rows], labels[rows]

  global_images, global_labels = parallel.rows_to_global(row_ids, parallel.batch_sharded(mesh), fetch)
  assert fetched[0].tolist() == list(range(10))  # One device: this process holds every row.
  assert np.array_equal(np.asarray(global_images)[10:], np.zeros((2, 2, 2, 3), np.uint8))
  chosen = jnp.array([7, 0, 9, 3])
  batch_images, batch_labels = jax.jit(lambda i, l, c: parallel.gather_rows(mesh, i, l, c))(
      global_images, global_labels, chosen)
  assert np.array_equal(batch_images, images[[7, 0, 9, 3]]) and np.array_equal(batch_labels, labels[[7, 0, 9, 3]])


def test_eight_devices_train_three_steps_like_one_device(tmp_path):
  one, eight = _worker('steps', 1, tmp_path), _worker('steps', 8, tmp_path)
  assert int(eight['devices']) == 8
  np.testing.assert_allclose(eight['losses'], one['losses'], rtol=1e-4)
  np.testing.assert_allclose(eight['flat'], one['flat'], atol=1e-3)


@pytest.mark.slow  # Three processes compiling: run by .ci/run after the README's command.
def test_four_seeds_split_over_devices_train_like_one_device_in_either_layout(tmp_path):
  """seed_sharding='batch' (each seed's batch split) and 'seeds' (a whole seed per device, the state split
  by seed; vectorised on 4 devices, and unrolled over each device's own 2 seeds on 2) give one device's steps
  and evaluation, to float rounding."""
  one, batch, whole, unrolled = (_worker('seeds_batch', 1, tmp_path), _worker('seeds_batch', 4, tmp_path),
                                 _worker('seeds_whole', 4, tmp_path), _worker('seeds_whole_unrolled', 2, tmp_path))
  assert str(batch['split']) == 'P()' and str(whole['split']) == str(unrolled['split']) == "P('data',)"
  assert int(batch['devices']) == int(whole['devices']) == 4 and int(unrolled['devices']) == 2
  for layout in (batch, whole, unrolled):
    assert layout['losses'].shape == (3, 4)
    np.testing.assert_allclose(layout['losses'], one['losses'], rtol=1e-4)
    np.testing.assert_allclose(layout['flat'], one['flat'], atol=1e-3)
    np.testing.assert_array_equal(layout['clean'], one['clean'])


@pytest.mark.slow  # Minutes of the suite: run by .ci/run after the README's command.
def test_eight_devices_evaluate_every_point_like_one_device(tmp_path):
  """Also with every program's weights as `hoisted_jit` arguments and its prologue's outputs replicated over
  the 8 devices (`eval_and_hoisted`' second run): the points the one-device run with embedded weights gives. XLA's
  optimisations stay off, as for the suite: the workers' time is compiles, and they take about half as
  long so."""
  one, eight = _worker('eval', 1, tmp_path), _worker('eval_and_hoisted', 8, tmp_path)
  assert int(eight['devices']) == 8 and int(one['count']) == int(eight['count']) == 64
  assert (int(one['clean']), int(one['pgd'])) == (int(eight['clean']), int(eight['pgd']))
  assert 0 < one['robust'].sum() < 64  # The check has points on both sides.
  with np.load(tmp_path / 'eval_and_hoisted_8_hoisted.npz') as saved:
    hoisted = {key: saved[key] for key in saved}
  assert int(hoisted['devices']) == 8
  for run in (eight, hoisted):
    np.testing.assert_array_equal(run['robust'], one['robust'])
    np.testing.assert_array_equal(run['y_adv'], one['y_adv'])


def _train(tmp_path, name, processes, devices, epochs, extra=()):
  workdir = tmp_path / name
  command = [sys.executable, '-m', 'rpat_jax.main', f'--workdir={workdir}', *TINY, f'--config.epochs={epochs}',
             *extra]
  if processes > 1:
    command = ['bash', os.path.join(ROOT, 'launch', 'local.sh'), str(processes), str(devices), *command]
  env = dict(_env(devices), RPAT_INIT_TIMEOUT='60', RPAT_LOG_DIR=str(tmp_path / f'{name}_logs'))
  result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def _close(rows_a, rows_b):
  """Equal epochs; losses to 1e-3 relative; accuracies within 2 of 64 test points (see the docstring)."""
  assert [r['epoch'] for r in rows_a] == [r['epoch'] for r in rows_b]
  for a, b in zip(rows_a, rows_b):
    np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-3)
    assert abs(a['test_clean_acc'] - b['test_clean_acc']) <= 2 / 64
    assert abs(a['test_pgd_acc'] - b['test_pgd_acc']) <= 2 / 64


@pytest.mark.slow  # Minutes of the suite: run by .ci/run after the README's command.
def test_two_processes_train_like_one_process_checkpoint_and_resume_on_other_layouts(tmp_path):
  two_by_two = _train(tmp_path, 'two', processes=2, devices=2, epochs=1)
  one_by_four = _train(tmp_path, 'one', processes=1, devices=4, epochs=2)
  _close(two_by_two, one_by_four[:1])
  assert (tmp_path / 'two' / 'checkpoints' / '1').is_dir() and (tmp_path / 'two' / 'best' / '1').is_dir()
  # The 2 x 2 run's checkpoint resumes on 1 process x 2 devices (same global batch) and continues.
  resumed = _train(tmp_path, 'two', processes=1, devices=2, epochs=2)
  assert [r['epoch'] for r in resumed] == [1, 2]
  assert resumed[0] == two_by_two[0]  # The first epoch's row is kept as written.
  _close(resumed, one_by_four)


@pytest.mark.slow  # Waits out a join timeout: run by .ci/run after the README's command.
def test_a_process_that_never_joins_fails_with_one_line_within_the_timeout(tmp_path):
  started = time.monotonic()
  result = subprocess.run(
      [sys.executable, '-m', 'rpat_jax.main', f'--workdir={tmp_path}', *TINY, '--coordinator_address=localhost:1',
       '--num_processes=2', '--process_id=1', '--init_timeout=5'],
      env=_env(2), cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == distributed.EXIT_CODE
  assert time.monotonic() - started < 60
  line = [l for l in result.stderr.splitlines() if l.startswith('rpat_jax: error:')]
  assert len(line) == 1 and 'could not join the JAX distributed runtime at localhost:1 within 5s' in line[0]


def test_processes_with_different_configs_stop_with_one_line(tmp_path):
  command = ['bash', os.path.join(ROOT, 'launch', 'local.sh'), '2', '1', sys.executable,
             os.path.join(ROOT, 'tests', 'multidevice_worker.py'), 'mismatch', str(tmp_path / 'unused')]
  result = subprocess.run(command, env=dict(_env(1), RPAT_INIT_TIMEOUT='60', RPAT_LOG_DIR=str(tmp_path)),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert 'rpat_jax: error: --config differs between processes' in result.stderr + (tmp_path / 'process_1.log').read_text()


@pytest.mark.parametrize('kwargs,message', [
    ({'mode': 'sometimes'}, "distributed='sometimes'; allowed: auto, on, off"),
    ({'num_processes': 2, 'process_id': 2}, 'process_id=2 is outside 0..1'),
    ({'num_processes': 0}, 'num_processes=0 must be >= 1'),
    ({'num_processes': 2, 'process_id': 0, 'timeout': 0}, 'init_timeout=0 must be >= 1 second'),
])
def test_bad_distributed_flags_fail_before_joining(kwargs, message):
  with pytest.raises(distributed.DistributedError, match=message.replace('(', r'\(').replace('.', r'\.')):
    distributed.initialize(**kwargs)


def test_one_process_does_not_join_anything():
  distributed.initialize('auto')  # No flags, no SLURM: a no-op.
  assert jax.process_count() == 1
