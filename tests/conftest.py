"""Shared test set-up: fast compilation for the whole session, and a tiny, fast version of the smoke config.

The suite compiles hundreds of small programs and runs most of them a few times, so compilation is most
of its time. Two settings, also inherited by the processes tests start (environment variables):
- XLA's optimisations off (`jax_disable_most_optimizations`, and XLA:CPU's older elemental emitters,
  `--xla_cpu_use_fusion_emitters=false`, which compile such programs twice as fast): compiles take a
  fifth of the time, and the tests' tiny programs run about as fast. Tests whose time goes into running
  long `lax` loops (the pure AutoAttack functions the cross-checks run) are marked `xla_optimized` and
  keep the optimisations (the emitter flag is process-wide and stays). The ensemble's host-driven
  attacks are not: they compile a program per bucket size and run short calls, and their tests took
  half the time unoptimised. Every comparison in the suite is between programs compiled the same way,
  or against a reference at a tolerance that does not depend on fusion.
  RPAT_TEST_OPTIMIZE=1 runs every test with XLA's optimisations on.
- a persistent compilation cache shared by the xdist workers and subprocesses of one session, so that
  identical programs (the same tiny step in several tests) compile once.
"""

import atexit
import contextlib
import os
import shutil
import sys
import tempfile

_OPTIMIZE_ALL = os.environ.get('RPAT_TEST_OPTIMIZE') == '1'
os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '0' if _OPTIMIZE_ALL else '1'
_FAST_EMITTERS = '--xla_cpu_use_fusion_emitters=false'  # XLA:CPU's elemental emitters: fast to compile.
if not _OPTIMIZE_ALL and _FAST_EMITTERS not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_FAST_EMITTERS}'.strip()
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # The first process of the session makes it, and removes it.
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='rpat_jax_test_cache_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402  (after the environment: JAX reads it when imported)
import pytest  # noqa: E402

# JAX reads these variables when it is imported; set them again in case a plugin imported it first.
jax.config.update('jax_disable_most_optimizations', os.environ.get('JAX_DISABLE_MOST_OPTIMIZATIONS') == '1')
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))
jax.config.update('jax_persistent_cache_min_entry_size_bytes',
                  int(os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES']))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `configs` is imported as a package from the repository root.
  sys.path.insert(0, ROOT)

from configs import smoke  # noqa: E402
from rpat_jax import threats  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line('markers', 'xla_optimized: compile with XLA optimisations on (a test whose time goes '
                          'into running long loops, not into compiling)')


# The slowest files first, so that two workers end together instead of one waiting for a long test at the end.
_FIRST = ('parallel_test', 'evaluate_test', 'bench_test', 'train_test', 'preemption_test', 'table_rows_test',
          'steps_test')


def pytest_collection_modifyitems(items):
  rank = lambda item: next((i for i, name in enumerate(_FIRST) if f'/{name}.py' in str(item.fspath)), len(_FIRST))
  items.sort(key=rank)  # Stable: the order within a file stays.


@pytest.hookimpl(optionalhook=True)  # Called only where pytest-xdist runs the session (-n).
def pytest_xdist_make_scheduler(config, log):
  """Work stealing in place of xdist's default 'load' schedule.

  'load' hands a worker that asks for more tests a fixed share of those left, and that share can be a
  run of slow tests: one worker then ran 75 s on its own at the end while the other sat idle (suite on
  2 workers: 323 s). With work stealing an idle worker takes half of the other's queue: 293 s, the
  two ending within a second (docs/benchmarks.md). An explicit --dist other than 'load' is kept.
  """
  if config.getoption('dist') != 'load':
    return None
  from xdist.scheduler import WorkStealingScheduling  # pylint: disable=import-outside-toplevel
  return WorkStealingScheduling(config, log)


def _optimize(on: bool) -> None:
  jax.config.update('jax_disable_most_optimizations', not on)
  os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '0' if on else '1'  # For the processes a test starts.


@contextlib.contextmanager
def xla_optimized():
  """XLA's optimisations on inside the block: for the part of a test that runs attack loops (AutoAttack),
  where unoptimised programs run several times slower."""
  if os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] == '0':  # Already on.
    yield
    return
  _optimize(True)
  try:
    yield
  finally:
    _optimize(False)


@pytest.fixture(autouse=True)
def _xla_optimizations(request):
  """XLA's optimisations on for tests marked `xla_optimized` (or every test with RPAT_TEST_OPTIMIZE=1)."""
  if request.node.get_closest_marker('xla_optimized') is None:
    yield
    return
  with xla_optimized():
    yield


def tiny_config(**overrides):
  """A small CNN (width 8) on 16x16 synthetic images: 4 steps of 64 per epoch, PGD-2."""
  config = smoke.get_config()
  config.model.width = 8
  config.data.synthetic.num_train = 256
  config.data.synthetic.num_test = 64
  config.data.synthetic.image_size = 16
  config.batch_size = 64
  config.epochs = 2
  config.attack.steps = 2
  config.eval.batch_size = 32
  config.eval.pgd_steps = 2
  config.log.progress = 'none'
  config = threats.resolve(config)
  config.update_from_flattened_dict(overrides)
  return config
