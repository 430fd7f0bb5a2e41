"""Gradients in chunks of images on this CPU (`rpat_jax/cpu/chunks.py`): what each chunk size costs.

  python benchmarks/cpu_chunks_cpu.py apgd [WORKDIR=/tmp/rpat_smoke_bench | MODEL] [N=256]
  python benchmarks/cpu_chunks_cpu.py gradient [MODEL=resnet18] [N=64]

apgd: milliseconds per APGD-CE iteration (host-driven, `compacted.make_apgd`, 20 iterations, eps 1e-6 so
no point leaves) on the quick-start model (`python -m rpat_jax.main --config=configs/smoke.py
--workdir=WORKDIR`) over N noise points, with the network whole and in chunks of 64, 32 and 16 images;
given a MODEL name instead (e.g. resnet18), that model at its initial weights, 10 iterations, whole and in
chunks of 32, 16 and 8.
gradient: milliseconds per jitted cross-entropy input gradient of MODEL at its initial weights over N
noise images, whole and in chunks of 16 and 8. Each form is timed three times, interleaved with the
others; prints one JSON line with every time, the first (compiling) call's seconds of each form and the
chunk `chunks` picks (docs/benchmarks.md).
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from configs import smoke  # pylint: disable=wrong-import-position
from rpat_jax.cpu import chunks  # pylint: disable=wrong-import-position
from rpat_jax.sharding import parallel  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import apgd, compacted  # pylint: disable=wrong-import-position
from rpat_jax.bench import eval_bench  # pylint: disable=wrong-import-position

what = sys.argv[1] if len(sys.argv) > 1 else 'apgd'
config = smoke.get_config()
if what == 'apgd':
  workdir = sys.argv[2] if len(sys.argv) > 2 else '/tmp/rpat_smoke_bench'
  n = int(sys.argv[3]) if len(sys.argv) > 3 else 256
  chunks, repeat, iterations = (None, 64, 32, 16), 3, 20
  if not os.path.isdir(workdir):  # A model's name: its initial weights.
    config.model.name, workdir = workdir, None
    chunks, iterations = (None, 32, 16, 8), 10
else:
  workdir = None
  config.model.name = sys.argv[2] if len(sys.argv) > 2 else 'resnet18'
  n = int(sys.argv[3]) if len(sys.argv) > 3 else 64
  chunks, repeat, iterations = (None, 16, 8), 3, 1
forward, variables, weights = eval_bench._variables(config, workdir, 'last', 10, (32, 32, 3))  # pylint: disable=protected-access
logits_fn = lambda images: forward.eval_logits(variables['params'], variables['batch_stats'], images).astype(jnp.float32)
x = np.random.default_rng(0).uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)
y = np.asarray(jax.jit(logits_fn)(x)).argmax(1).astype(np.int32)


def form(chunk):
  fn = chunks.chunked(logits_fn, chunk)
  if what == 'apgd':
    attack = compacted.make_apgd(fn, jax.random.key(0), norm='Linf', eps=1e-6, loss='ce', n_iter=iterations)
    return lambda: attack(compacted.Engine(logits_fn, parallel.make_mesh(), n), x, y, np.arange(n))[0]
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  gradient = jax.jit(lambda z: apgd.loss_and_grad(fn, 'ce', yj, None, z))
  return lambda: gradient(xj)


forms = {str(chunk or 'whole'): form(chunk) for chunk in chunks}
first_call = {}
for name, run in forms.items():
  started = time.perf_counter()
  jax.block_until_ready(run())  # Compiles.
  first_call[name] = round(time.perf_counter() - started, 1)
ms = {name: [] for name in forms}
for _ in range(repeat):
  for name, run in forms.items():
    started = time.perf_counter()
    jax.block_until_ready(run())
    ms[name].append(round((time.perf_counter() - started) / iterations * 1e3, 1))
print(json.dumps({'what': what, 'model': config.model.name, 'weights': weights, 'n': n,
                  'ms_per_iteration' if what == 'apgd' else 'ms_per_gradient': ms,
                  'median': {name: float(np.median(values)) for name, values in ms.items()},
                  'first_call_seconds': first_call,
                  'cpu_chunks_picks': chunks.chunk_size(logits_fn, x.shape[1:], 1)}))
