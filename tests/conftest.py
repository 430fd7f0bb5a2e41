"""The session's set-up: fast compilation, the test order and scheduling (helpers for tests: helpers.py).

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
import os
import shutil
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

from helpers import xla_optimized  # noqa: E402
from rpat_jax import cpu  # noqa: E402

# RPAT_TEST_DEFAULT_BACKEND=gpu (or tpu): jax.default_backend() answers that name in the test processes, the
# devices staying CPUs, so the suite shows what holds where the CPU forms are off (rpat_jax.cpu.enabled()).
if os.environ.get('RPAT_TEST_DEFAULT_BACKEND'):
  jax.default_backend = lambda: os.environ['RPAT_TEST_DEFAULT_BACKEND']


def pytest_configure(config):
  config.addinivalue_line('markers', 'xla_optimized: compile with XLA optimisations on (a test whose time goes '
                          'into running long loops, not into compiling)')
  config.addinivalue_line('markers', 'slow: the heaviest tests (multi-process runs: the pod path under faults; a few '
                          'single tests of 15 s or more); the README\'s test command leaves them out (pytest.ini), '
                          '`.ci/run` runs them after it (-m slow)')
  config.addinivalue_line('markers', 'cpu_only: a test of a CPU-only path, skipped where rpat_jax.cpu.enabled() '
                          'is false')


def pytest_runtest_setup(item):
  """Skips a `cpu_only` test where the CPU forms are off. Asked at setup, not at import: a process that
  imports the tests' modules (a worker joining jax.distributed) must not start a backend then."""
  if item.get_closest_marker('cpu_only') is not None and not cpu.enabled():
    pytest.skip('a CPU-only path: it runs only where rpat_jax.cpu.enabled()')


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
  run of slow tests, which one worker then runs alone at the end while the other sits idle. With work
  stealing an idle worker takes half of the other's queue, and the two end together. An explicit --dist
  other than 'load' is kept.
  """
  if config.getoption('dist') != 'load':
    return None
  from xdist.scheduler import WorkStealingScheduling  # pylint: disable=import-outside-toplevel
  return WorkStealingScheduling(config, log)


@pytest.fixture(autouse=True)
def _xla_optimizations(request):
  """XLA's optimisations on for tests marked `xla_optimized` (or every test with RPAT_TEST_OPTIMIZE=1)."""
  if request.node.get_closest_marker('xla_optimized') is None:
    yield
    return
  with xla_optimized():
    yield
