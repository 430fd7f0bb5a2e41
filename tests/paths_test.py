"""Workdir files on a store that is not the local disk: the path layer, the run's records, the lock, the
AutoAttack state; an unreachable bucket fails in one line; no module opens workdir files another way."""

import os
import re
import time

import numpy as np
import pytest
from etils.epath import backend
from etils.epath import gpath
from etils.epath import register

from helpers import ROOT
from helpers import tiny_config
from rpat_jax.run import metrics_log
from rpat_jax.run import paths
from rpat_jax.run import saved_config
from rpat_jax.run import workdir_lock
from rpat_jax.autoattack import ensemble


@pytest.fixture
def memory_store(monkeypatch, tmp_path):
  """`memory://` served by fsspec's in-process memory filesystem, through etils.epath like gs:// (offline).
  The test runs in an empty directory, so a file written locally by mistake would show up there."""
  import fsspec  # pylint: disable=import-outside-toplevel
  store = fsspec.filesystem('memory')

  class MemoryBackend(backend._FileSystemSpecBackend):  # pylint: disable=protected-access
    def fs(self, path):
      assert os.fspath(path).startswith('memory://'), path
      return store

  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, 'memory', MemoryBackend())  # pylint: disable=protected-access
  monkeypatch.setattr(gpath, '_URI_SCHEMES', gpath._URI_SCHEMES | {'memory'})  # pylint: disable=protected-access
  monkeypatch.setitem(gpath._URI_MAP_ROOT, 'memory://', '/memory/')  # pylint: disable=protected-access
  monkeypatch.setattr(gpath, '_URI_PREFIXES', gpath._URI_PREFIXES + ('memory://',))  # pylint: disable=protected-access
  monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, 'memory://', gpath.PosixGPath)  # pylint: disable=protected-access
  monkeypatch.chdir(tmp_path)
  yield store
  store.rm('/run', recursive=True) if store.exists('/run') else None
  assert os.listdir(tmp_path) == []  # Nothing fell back to the local disk.


def test_the_run_records_live_on_a_non_local_store(memory_store):
  workdir = paths.make_dir('memory://run')
  assert str(workdir) == 'memory://run' and memory_store.isdir('/run')
  config = tiny_config()
  saved_config.write(config, workdir)
  assert saved_config.check_resume(tiny_config(epochs=5), workdir)
  with pytest.raises(saved_config.ConfigChangeError, match='seed: 0 -> 1'):
    saved_config.check_resume(tiny_config(seed=1), workdir)

  log = metrics_log.MetricsLog(workdir, resume_epoch=0)  # TensorBoard is skipped there, with a warning.
  for epoch in (1, 2, 3):
    log.write({'epoch': epoch, 'step': epoch * 4, 'train_loss': 1.0 / epoch})
  log.close()
  metrics_log.MetricsLog(workdir, resume_epoch=2).close()  # A resume from epoch 2 drops the row of epoch 3.
  assert [line.count('"epoch"') for line in memory_store.cat('/run/metrics.jsonl').decode().splitlines()] == [1, 1]

  state_path = str(workdir / 'eval' / 'aa_state_best.npz')
  x, labels = np.zeros((4, 2, 2, 3), np.float32), np.zeros(4, np.int32)
  state = ensemble._State(state_path, {'n': 4}, x, labels, labels, log=print)  # pylint: disable=protected-access
  state.per_attack = {'apgd-ce': 0.5}
  state.save()
  resumed = ensemble._State(state_path, {'n': 4}, x, labels, labels, log=print)  # pylint: disable=protected-access
  assert resumed.per_attack == {'apgd-ce': 0.5}


def test_the_lock_of_a_store_without_locks_is_a_heartbeat_file(memory_store):
  workdir = paths.make_dir('memory://run')
  held = workdir_lock.WorkdirLock(workdir)
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f'pid {os.getpid()} on'):
    workdir_lock.WorkdirLock(workdir)
  record = memory_store.cat('/run/lock').decode()
  memory_store.pipe('/run/lock', record.replace(f'"pid": {os.getpid()}', '"pid": 999999999').encode())
  workdir_lock.WorkdirLock(workdir)  # Its holder is a dead process on this host: taken over.
  stale = re.sub(r'"heartbeat": [0-9.]+', f'"heartbeat": {time.time() - 2 * workdir_lock.STALE_SECONDS}',
                 memory_store.cat('/run/lock').decode()).replace('"host": "', '"host": "elsewhere-')
  memory_store.pipe('/run/lock', stale.encode())
  workdir_lock.WorkdirLock(workdir).release()  # Another host's lock without a heartbeat for long: stale.
  assert not memory_store.exists('/run/lock')
  held.release()


def test_no_module_touches_workdir_files_but_through_the_path_layer():
  """Workdir files go through `paths` (etils.epath), so gs:// never becomes a local ./gs: directory."""
  for module in ('train.py', 'run/metrics_log.py', 'run/checkpointing.py', 'run/saved_config.py',
                 'evaluate/__init__.py', 'evaluate/variables.py', 'autoattack/ensemble.py'):
    with open(os.path.join(ROOT, 'rpat_jax', module)) as f:
      source = f.read()
    for pattern in (r'\bopen\(', r'os\.path\.', r'os\.makedirs', r'os\.replace', r'np\.savez\([a-z_.]*path'):
      assert not re.search(pattern, source), f'{module}: {pattern}'


def test_a_local_file_system_without_flock_falls_back_to_the_heartbeat_file(tmp_path, monkeypatch):
  import fcntl  # pylint: disable=import-outside-toplevel

  def no_flock(*args):
    raise OSError(37, 'No locks available')
  monkeypatch.setattr(fcntl, 'flock', no_flock)
  held = workdir_lock.WorkdirLock(tmp_path)
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f'pid {os.getpid()} on'):
    workdir_lock.WorkdirLock(tmp_path)
  held.release()
  assert not (tmp_path / 'lock').exists()
