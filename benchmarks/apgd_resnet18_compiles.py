"""Where one APGD-CE call on ResNet-18 spends its time outside the iterations: every trace and compile that
JAX logs during `ensemble.evaluate`, and the ensemble's own log lines with seconds since the call began.

  python benchmarks/apgd_resnet18_compiles.py [N=64]   # $TFDS_DIR: cifar10_jpeg (else uniform noise)

The network and points are `benchmarks/apgd_resnet18_cpu.py`'s (its `problem`: initial weights, own predictions
as labels), the attack too (Linf 0.5/255, 100 iterations, 1 restart, one batch of N). Prints the logged lines, then the seconds in compiles of 0.1 s or
more and the total (docs/benchmarks.md).
"""
import logging
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
import jax  # pylint: disable=wrong-import-position

from apgd_resnet18_cpu import problem  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import ensemble  # pylint: disable=wrong-import-position

n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
_, x, y, _, _, _, logits_fn = problem(n)

started = time.perf_counter()
compiles = []


class _Compiles(logging.Handler):
  def emit(self, record):
    message = record.getMessage()
    found = re.search(r'Finished (XLA compilation|tracing) (?:of |for )?(.*?) in ([\d.e-]+) sec', message)
    if found and float(found.group(3)) >= 0.1:
      compiles.append((found.group(1), float(found.group(3))))
      print(f'{time.perf_counter() - started:7.1f} s  {found.group(1)} of {found.group(2)[:40]}: {float(found.group(3)):.2f} s')


jax.config.update('jax_log_compiles', True)
logging.getLogger('jax').addHandler(_Compiles())
ensemble.evaluate(logits_fn, x, y, eps=0.5 / 255, version='custom', attacks=['apgd-ce'], batch_size=n,
                  attack_options={'apgd-ce': {'n_iter': 100, 'n_restarts': 1}},
                  log=lambda message: print(f'{time.perf_counter() - started:7.1f} s  {message}', flush=True))
print(f'total {time.perf_counter() - started:.1f} s; compiling {sum(s for k, s in compiles if k != "tracing"):.1f} s, '
      f'tracing {sum(s for k, s in compiles if k == "tracing"):.1f} s (steps of 0.1 s or more)')
