"""Seconds per attack of standard AutoAttack, ours against the official `pyautoattack`, on the quick-start model.

  python benchmarks/aa_parts_cpu.py [WORKDIR=/tmp/rpat_smoke_bench] [N=256]   # needs requirements-test.txt

WORKDIR is a quick-start run (`python -m rpat_jax.main --config=configs/smoke.py --workdir=WORKDIR`); the
points are its first N synthetic test images with their labels, Linf 8/255, one batch of N, as the
benchmark's eval row (`python -m rpat_jax.bench --what=eval`). Ours runs twice, the second timed, its
programs read from JAX's persistent compilation cache as the benchmark's second call does (a temporary
directory unless one is configured), each attack's seconds read from the ensemble's log; the official
code's from its own log (cumulative there, differenced here). Prints one JSON line (docs/benchmarks.md).
"""
import json
import logging
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position
from pyautoattack import AutoAttack  # pylint: disable=wrong-import-position

from configs import smoke  # pylint: disable=wrong-import-position
from rpat_jax import autoattack  # pylint: disable=wrong-import-position
from rpat_jax.bench import eval_bench, torch_step  # pylint: disable=wrong-import-position

workdir = sys.argv[1] if len(sys.argv) > 1 else '/tmp/rpat_smoke_bench'
n = int(sys.argv[2]) if len(sys.argv) > 2 else 256
torch.set_num_threads(2)
config = smoke.get_config()
x, labels, points = eval_bench._points(config, n, 32, 10)  # pylint: disable=protected-access
forward, variables, weights = eval_bench._variables(config, workdir, 'last', 10, x.shape[1:])  # pylint: disable=protected-access
logits_fn = lambda images: forward.eval_logits(variables['params'], variables['batch_stats'], images).astype(jnp.float32)
y = np.asarray(labels).astype(np.int32)
eps = 8 / 255

ours = {}


def log(message):
  found = re.match(r'robust accuracy after (\S+): .* \(([\d.]+) s\)', message)
  if found:
    ours[found.group(1)] = float(found.group(2))


run = lambda log: autoattack.evaluate(logits_fn, x, y, norm='Linf', eps=eps, version='standard', batch_size=n,
                                      seed=config.seed, log=log)
eval_bench._compilation_cache()  # pylint: disable=protected-access
run(lambda message: None)
started = time.perf_counter()
result = run(log)
ours_seconds = time.perf_counter() - started

lines = []


class Collect(logging.Handler):
  def emit(self, record):
    lines.append(record.getMessage())


model = torch_step.build_model(config.model, 10, jax.device_get(variables), torch.device('cpu')).eval()
adversary = AutoAttack(model, norm='Linf', eps=eps, version='standard', seed=config.seed, device='cpu')
adversary.verbose = True
adversary.logger.setLevel(logging.DEBUG)
adversary.logger.addHandler(Collect())
xt = torch.as_tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
started = time.perf_counter()
adversary.run_standard_evaluation(xt, torch.as_tensor(y.astype(np.int64)), batch_size=n)
official_seconds = time.perf_counter() - started
official, before = {}, 0.0
for line in lines:
  found = re.match(r'robust accuracy after (\S+): .*total time ([\d.]+) s', line)
  if found:
    official[found.group(1).lower()] = round(float(found.group(2)) - before, 1)
    before = float(found.group(2))
print(json.dumps({'weights': weights, 'points': points, 'n': n, 'ours_seconds': round(ours_seconds, 1),
                  'ours_per_attack_seconds': ours, 'official_seconds': round(official_seconds, 1),
                  'official_per_attack_seconds': official, 'ours_robust': result['robust_acc']}))
