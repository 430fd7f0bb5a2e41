"""A pytest plugin that writes when each test starts and ends, per xdist worker, then sums it up.

  PYTHONPATH=benchmarks python -m pytest -q -n 2 tests -p pytest_worker_times

Each worker appends "<time> start|end <test id>" lines to $WORKER_TIMES_DIR/<worker>.txt (default
/tmp/worker_times; cleared by the controller at start); at the end the controller prints, per
worker, its tests, busy seconds and when its last test ended, counted from the start of the session
(docs/benchmarks.md: whether the two workers end together).
"""
import glob
import os
import shutil
import time

_DIR = os.environ.get('WORKER_TIMES_DIR', '/tmp/worker_times')
_WORKER = os.environ.get('PYTEST_XDIST_WORKER')
_STARTED = time.time()
_log = None


def pytest_sessionstart(session):
  del session
  if _WORKER is None:  # The controller (or a run without xdist) starts afresh.
    shutil.rmtree(_DIR, ignore_errors=True)
    os.makedirs(_DIR)
    with open(os.path.join(_DIR, 'started'), 'w') as f:
      f.write(repr(_STARTED))


def _write(kind, nodeid):
  global _log
  if _WORKER is None:
    return
  if _log is None:
    _log = open(os.path.join(_DIR, f'{_WORKER}.txt'), 'a')
  _log.write(f'{time.time():.3f} {kind} {nodeid}\n')
  _log.flush()


def pytest_runtest_logstart(nodeid, location):
  del location
  _write('start', nodeid)


def pytest_runtest_logfinish(nodeid, location):
  del location
  _write('end', nodeid)


def pytest_terminal_summary(terminalreporter):
  if _WORKER is not None:
    return
  with open(os.path.join(_DIR, 'started')) as f:
    started = float(f.read())
  for path in sorted(glob.glob(os.path.join(_DIR, 'gw*.txt'))):
    begun, busy, tests, last = {}, 0.0, 0, 0.0
    with open(path) as f:
      for line in f:
        stamp, kind, nodeid = line.rstrip('\n').split(' ', 2)
        if kind == 'start':
          begun[nodeid] = float(stamp)
        else:
          busy += float(stamp) - begun[nodeid]
          tests, last = tests + 1, float(stamp) - started
    terminalreporter.write_line(f'{os.path.basename(path)[:-4]}: {tests} tests, busy {busy:.1f} s, '
                                f'last ended at {last:.1f} s')
