"""Standard AutoAttack on the quick-start model with and without `convs` (RGB stems on padded channels,
stride-2 input gradients in phases).

  python benchmarks/cpu_convs_cpu.py [WORKDIR=/tmp/rpat_smoke_bench] fast padded plain fast padded plain

WORKDIR is a quick-start run (`python -m rpat_jax.main --config=configs/smoke.py --workdir=WORKDIR`); the
points are its first 256 synthetic test images, Linf 8/255, one batch of 256, as the benchmark's eval row.
Runs our AutoAttack once per word, in that order: 'fast' as shipped, 'padded' with XLA's stride-2
convolutions instead of the phases (the code before them), 'plain' with `convs.for_attacks` the
identity (before both); each run compiles its own programs, so the runs compare like with like.
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
from phase_conv_cpu import xla_stride2  # pylint: disable=wrong-import-position
from rpat_jax import autoattack  # pylint: disable=wrong-import-position
from rpat_jax.cpu import convs  # pylint: disable=wrong-import-position
from rpat_jax.cpu import phase_conv  # pylint: disable=wrong-import-position
from rpat_jax.bench import eval_bench  # pylint: disable=wrong-import-position

words = sys.argv[1:]
workdir = '/tmp/rpat_smoke_bench'
if words and words[0] not in ('fast', 'padded', 'plain'):
  workdir, words = words[0], words[1:]
config = smoke.get_config()
x, labels, _ = eval_bench._points(config, 256, 32, 10)  # pylint: disable=protected-access
forward, variables, _ = eval_bench._variables(config, workdir, 'last', 10, x.shape[1:])  # pylint: disable=protected-access
y = np.asarray(labels).astype(np.int32)
fast, phases = convs.for_attacks, phase_conv.conv_stride2

for word in words or ['fast', 'padded', 'plain']:
  convs.for_attacks = (lambda fn: fn) if word == 'plain' else fast
  phase_conv.conv_stride2 = xla_stride2 if word == 'padded' else phases
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
