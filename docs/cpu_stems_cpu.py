"""Standard AutoAttack on the quick-start model with and without `cpu_stems` (RGB stems on padded channels).

  python docs/cpu_stems_cpu.py [WORKDIR=/tmp/rpat_smoke_bench] padded plain padded plain padded

WORKDIR is a quick-start run (`python -m rpat_jax.main --config=configs/smoke.py --workdir=WORKDIR`); the
points are its first 256 synthetic test images, Linf 8/255, one batch of 256, as the benchmark's eval row.
Runs our AutoAttack once per word, in that order ('plain' replaces `cpu_stems.for_attacks` by the
identity: the code before it); each run compiles its own programs, so the runs compare like with like.
Prints per run: seconds, each attack's seconds from the ensemble's log, and the robust points
(docs/benchmarks.md).
"""
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from configs import smoke  # pylint: disable=wrong-import-position
from rpat_jax import autoattack, cpu_stems  # pylint: disable=wrong-import-position
from rpat_jax.bench import eval_bench  # pylint: disable=wrong-import-position

words = sys.argv[1:]
workdir = '/tmp/rpat_smoke_bench'
if words and words[0] not in ('padded', 'plain'):
  workdir, words = words[0], words[1:]
config = smoke.get_config()
x, labels, _ = eval_bench._points(config, 256, 32, 10)  # pylint: disable=protected-access
forward, variables, _ = eval_bench._variables(config, workdir, 'last', 10, x.shape[1:])  # pylint: disable=protected-access
y = np.asarray(labels).astype(np.int32)
padded = cpu_stems.for_attacks

for word in words or ['padded', 'plain']:
  cpu_stems.for_attacks = padded if word == 'padded' else (lambda fn: fn)
  logits_fn = lambda images: forward.eval_logits(variables['params'], variables['batch_stats'], images).astype(jnp.float32)
  parts = {}

  def log(message):
    found = re.match(r'robust accuracy after (\S+): .* \(([\d.]+) s\)', message)
    if found:
      parts[found.group(1)] = float(found.group(2))

  started = time.perf_counter()
  result = autoattack.evaluate(logits_fn, x, y, norm='Linf', eps=8 / 255, version='standard', batch_size=256,
                               seed=config.seed, log=log)
  print(word, round(time.perf_counter() - started, 1), parts, 'robust', int(result['robust'].sum()), flush=True)
