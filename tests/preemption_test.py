"""What a long run meets, injected: signals, a crash after timed checkpoints, damaged checkpoints, a full
disk, a second run on the same workdir, a changed config, a non-finite loss. Each ends in one line and
loses nothing; resumed runs end equal to an uninterrupted one."""

import contextlib
import gc
import os
import resource
import shutil
import signal
import subprocess
import sys
import types

import chex
import jax
import pytest

from helpers import ROOT
from helpers import metric_rows as _rows
from helpers import tiny_config
from helpers import wrap_steps as _wrap_steps
from rpat_jax.run import checkpointing
from rpat_jax.run import metrics_log
from rpat_jax.run import preemption
from rpat_jax.run import saved_config
from rpat_jax import train
from rpat_jax.run import workdir_lock

# tiny_config on the command line (the subprocess tests resume runs it made, so the configs must agree).
TINY = ['--config=configs/smoke.py', '--config.model.width=8', '--config.data.synthetic.num_train=256',
        '--config.data.synthetic.num_test=64', '--config.data.synthetic.image_size=16', '--config.batch_size=64',
        '--config.attack.steps=2', '--config.eval.batch_size=32', '--config.eval.pgd_steps=2',
        '--config.log.progress=none']


def _assert_same_run(state, workdir, straight):
  reference_dir, reference = straight
  assert int(state.step) == int(reference.step)
  chex.assert_trees_all_equal(state.params, reference.params)
  chex.assert_trees_all_equal(state.opt_state, reference.opt_state)
  assert _rows(workdir) == _rows(reference_dir)  # Every metric, the resumed epochs' means included.


# Orbax's reads of the damaged files leave coroutines whose errors Python reports when it collects them.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_signals_a_crash_and_damaged_checkpoints_lose_nothing(tmp_path, monkeypatch, caplog):
  """One uninterrupted 2-epoch run (4 steps per epoch) is the reference for all three (one test: the
  reference is trained once)."""
  straight = tmp_path / 'straight', train.train_and_evaluate(tiny_config(epochs=2), str(tmp_path / 'straight'))
  tmp_path = tmp_path / 'run'
  workdir = str(tmp_path)
  caplog.set_level('INFO', logger='absl')
  handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  kill = lambda signum, at: (lambda n: n == at and os.kill(os.getpid(), signum))
  _wrap_steps(monkeypatch, kill(signal.SIGTERM, 6))  # Mid-epoch 2: after step 6 of 8.
  with pytest.raises(preemption.Preempted) as stopped:
    train.train_and_evaluate(tiny_config(epochs=2), workdir)
  assert stopped.value.exit_status == 143 and 'stopped by SIGTERM at step 6' in str(stopped.value)
  assert os.listdir(tmp_path / 'partial') == ['6'] and sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']

  def crash(n):  # A crash without warning (kill -9) before step 8, with a timed checkpoint after every step.
    if n == 2:
      raise RuntimeError('the machine went away')
  _wrap_steps(monkeypatch, crash)
  with pytest.raises(RuntimeError, match='went away'):
    train.train_and_evaluate(tiny_config(epochs=2, **{'checkpoint.every_minutes': 1e-9}), workdir)

  caplog.clear()
  _wrap_steps(monkeypatch, kill(signal.SIGINT, 1))  # Ctrl-C in the next run's first step.
  with pytest.raises(preemption.Preempted) as stopped:
    train.train_and_evaluate(tiny_config(epochs=2), workdir)
  resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Resumed from')]
  assert 'at step 7 (epoch 2, step 3 of 4)' in resumed[0], resumed  # The timed checkpoint of step 7.
  assert stopped.value.exit_status == 130 and 'at step 8' in str(stopped.value)
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # Restored.
  monkeypatch.undo()
  _assert_same_run(train.train_and_evaluate(tiny_config(epochs=2), workdir), workdir, straight)
  assert os.listdir(tmp_path / 'partial') == []  # Superseded by the epoch checkpoint.
  _check_damaged_checkpoints(tmp_path, straight, caplog)
  gc.collect()  # Here, under this test's filter.


def _damage(step_dir, how):
  files = sorted((os.path.join(d, f) for d, _, names in os.walk(step_dir) for f in names), key=os.path.getsize)
  if how == 'truncate':
    os.truncate(files[-1], 100)
  else:
    os.remove(files[-1])


def _check_damaged_checkpoints(workdir, straight, caplog):
  """A damaged newest checkpoint is skipped in one line and moved aside, the one before it resumed; with
  none readable the run stops in one line instead of starting afresh over them."""
  everything = workdir.parent / 'all'
  shutil.copytree(workdir, everything)
  _damage(workdir / 'checkpoints' / '2', 'truncate')
  caplog.clear()
  train.train_and_evaluate(tiny_config(epochs=2), str(workdir))
  warnings = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert len(warnings) == 1 and 'checkpoints/2' in warnings[0] and '\n' not in warnings[0]
  assert [name.split('-')[:2] for name in os.listdir(workdir / 'damaged')] == [['checkpoints', '2']]
  assert _rows(workdir) == _rows(straight[0])  # Epoch 2 trained again: the same.

  _damage(everything / 'checkpoints' / '1', 'delete')
  _damage(everything / 'checkpoints' / '2', 'truncate')
  with pytest.raises(checkpointing.CheckpointError, match='no checkpoint in .* can be read') as error:
    train.train_and_evaluate(tiny_config(epochs=3), str(everything))
  assert '\n' not in str(error.value)
  assert sorted(os.listdir(everything / 'checkpoints')) == ['1', '2']


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_step_trained_again_after_a_fallback_replaces_its_first_save(tmp_path):
  """The newest checkpoint damaged, so the run falls back and trains epoch 2 again, which best/ already
  holds (evaluated only at epoch 2, so epoch 2 is the best): the new save replaces it, the run finishes
  and equals an uninterrupted one."""
  config = lambda epochs: tiny_config(epochs=epochs, **{'eval.every_epochs': 2})
  straight = train.train_and_evaluate(config(3), str(tmp_path / 'straight'))
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config(2), str(workdir))
  assert os.listdir(workdir / 'best') == ['2']
  _damage(workdir / 'checkpoints' / '2', 'truncate')
  state = train.train_and_evaluate(config(3), str(workdir))
  _assert_same_run(state, str(workdir), (str(tmp_path / 'straight'), straight))
  assert os.listdir(workdir / 'best') == ['2'] and sorted(os.listdir(workdir / 'checkpoints')) == ['1', '2', '3']
  assert [name.split('-')[:2] for name in os.listdir(workdir / 'damaged')] == [['checkpoints', '2']]
  gc.collect()


def _main(workdir, *flags_, monkeypatch, capsys):
  """The training binary's main in this process (what `python -m rpat_jax.main` runs after parsing):
  (exit status, its one stderr line)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from rpat_jax import main as train_main  # pylint: disable=import-outside-toplevel
  flag_values = flags.FlagValues()
  holders = train_main.define_flags(flag_values)
  argv = ['rpat_jax', f'--workdir={workdir}', *TINY, *flags_]
  monkeypatch.setattr(sys, 'argv', argv)  # ml_collections reads the --config.* overrides from sys.argv.
  flag_values(argv)
  with pytest.raises(SystemExit) as exit_info:
    train_main.main(['rpat_jax'], holders)
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('rpat_jax: error: '), lines
  return exit_info.value.code, lines[0]


def test_a_busy_workdir_and_a_changed_config_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  saved_config.write(tiny_config(), workdir)  # A run's record: the refusals come before anything is built.
  recorded = (workdir / 'config.json').read_text()
  status, line = _main(workdir, '--config.epochs=3', '--config.model.width=4', '--config.rpat.lam=0.5',
                       monkeypatch=monkeypatch, capsys=capsys)
  assert status == 2 and 'model.width: 8 -> 4' in line and 'rpat.lam: 1.0 -> 0.5' in line
  assert (workdir / 'config.json').read_text() == recorded  # Not rewritten by a refused run.
  holder = workdir_lock.WorkdirLock(workdir)  # This test process holds the workdir.
  try:
    status, line = _main(workdir, '--config.epochs=3', monkeypatch=monkeypatch, capsys=capsys)
  finally:
    holder.release()
  assert status == 2 and 'is in use by' in line and f'pid {os.getpid()}' in line


@contextlib.contextmanager
def _disk_full_from_the_next_save(monkeypatch):
  """From the next checkpoint save on, writes past 2 KiB fail with EFBIG in this process (SIGXFSZ ignored):
  a full disk for every file a checkpoint writes (its data and metadata files are larger), after the run's
  own records of the epoch are written. The shared compilation cache is not written meanwhile."""
  limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  min_entry = jax.config.jax_persistent_cache_min_entry_size_bytes
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 2**62)
  real_save = checkpointing.Checkpoints.save

  def save(self, *args, **kwargs):
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, limits[1]))
    return real_save(self, *args, **kwargs)

  monkeypatch.setattr(checkpointing.Checkpoints, 'save', save)
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    signal.signal(signal.SIGXFSZ, handler)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', min_entry)
    monkeypatch.setattr(checkpointing.Checkpoints, 'save', real_save)


# TensorStore's leftover write callbacks report 'Event loop is closed' (the command line drops those).
@pytest.mark.slow  # Run by .ci/run after the README's command.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_checkpoints(tmp_path, monkeypatch):
  train.train_and_evaluate(tiny_config(epochs=1), str(tmp_path))
  with _disk_full_from_the_next_save(monkeypatch), pytest.raises(checkpointing.CheckpointSaveError) as error:
    train.train_and_evaluate(tiny_config(epochs=2), str(tmp_path))
  line = str(error.value)
  for fragment in ('saving a checkpoint in', 'File too large', 'the state needs about', 'MB are free there',
                   'earlier checkpoints are intact'):
    assert fragment in line and '\n' not in line, line
  assert sorted(name for name in os.listdir(tmp_path / 'checkpoints') if name.isdigit()) == ['1']
  gc.collect()  # Here, under this test's filter.
  train.train_and_evaluate(tiny_config(epochs=2), str(tmp_path))  # With space again, the run goes on.
  assert [row['epoch'] for row in _rows(tmp_path)] == [1, 2]


def test_the_command_line_drops_the_noise_of_a_failed_asynchronous_write():
  """TensorStore's leftover write callbacks report 'Event loop is closed' as unraisable errors after a
  failed save; the tools drop those (and only those), so the one-line report stands alone."""
  previous, seen = sys.unraisablehook, []
  sys.unraisablehook = lambda unraisable: seen.append(str(unraisable.exc_value))
  try:
    metrics_log.quiet_library_logs()
    for message in ('Event loop is closed', 'something else'):
      sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError(message),
                                               exc_traceback=None, err_msg=None, object=None))
    assert seen == ['something else']
  finally:
    sys.unraisablehook = previous


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; from rpat_jax import workdir_lock; '
                             f'lock = workdir_lock.WorkdirLock({str(tmp_path)!r}); print("held", flush=True); '
                             'time.sleep(60)'], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f'pid {holder.pid} on'):
    workdir_lock.WorkdirLock(tmp_path)
  holder.kill()  # kill -9: no clean-up runs.
  holder.wait()
  workdir_lock.WorkdirLock(tmp_path).release()


def test_config_changes_that_alter_the_run_are_refused_the_rest_allowed(tmp_path):
  config = tiny_config()
  saved_config.write(config, tmp_path)
  allowed = tiny_config(**{'epochs': 9, 'eval.every_epochs': 2, 'log.every_steps': 3, 'checkpoint.keep': 1,
                           'data.data_dir': '/elsewhere', 'attack.unroll': True})
  assert saved_config.check_resume(allowed, tmp_path)
  for key, value in (('model.width', 4), ('method', 'trades'), ('attack.eps', 4 / 255), ('rpat.rates', (0.3,)),
                     ('optimizer.momentum', 0.5), ('batch_size', 32), ('seed', 1), ('data.name', 'cifar10'),
                     ('schedule.milestones', (1,))):
    with pytest.raises(saved_config.ConfigChangeError, match=f'{key}: ') as error:
      saved_config.check_resume(tiny_config(**{key: value}), tmp_path)
    assert '\n' not in str(error.value)
  (tmp_path / 'config.json').write_text('{"model": ')  # A damaged record is refused, not overwritten.
  with pytest.raises(saved_config.ConfigChangeError, match='cannot be read'):
    saved_config.check_resume(config, tmp_path)


def test_a_non_finite_loss_stops_within_the_progress_interval(tmp_path, monkeypatch):
  config = tiny_config(epochs=2, **{'data.synthetic.num_train': 512, 'log.every_steps': 1})  # 8 steps an epoch.
  real = train.compile_epoch_step
  calls = []

  def poisoned(*args, **kwargs):  # The loss turns non-finite at global step 11 (the 3rd of epoch 2).
    step = real(*args, **kwargs)

    def run(state, *inputs):
      calls.append(1)
      state, metrics = step(state, *inputs)
      with jax.transfer_guard('allow'):
        return state, dict(metrics, loss=metrics['loss'] / (state.step != 11))  # x / 0: inf (nan for 0).
    return run
  monkeypatch.setattr(train, 'compile_epoch_step', poisoned)
  with pytest.raises(train.NonFiniteLossError, match=r'at step 11: loss \(epoch 2\)') as error:
    train.train_and_evaluate(config, str(tmp_path))
  assert '\n' not in str(error.value)
  assert len(calls) <= 11 + 2 < 16  # Seen two steps later (the loop waits on a step two behind), not at the end.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1'] and os.listdir(tmp_path / 'best') == ['1']
  assert [row['epoch'] for row in _rows(tmp_path)] == [1]
