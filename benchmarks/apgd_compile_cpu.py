"""APGD's random starts: compile and run time of their program at XLA's default optimisation and at level 0.

  python benchmarks/apgd_compile_cpu.py [N=64]

The program `compacted.make_apgd` compiles for a run's start points (one per point from its own key,
threefry): N CIFAR-sized points, Linf. It compiles it once at each level (a second compile in the same
process would come from JAX's cache: run the script again for another round) and times 10 calls; prints
one JSON line (docs/benchmarks.md).
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from rpat_jax.attacks import point_keys  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import apgd  # pylint: disable=wrong-import-position


def main():
  n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
  key = jax.random.key(0)

  def start_points(x, indices, run):
    keys = jax.vmap(lambda k: jax.random.fold_in(k, run))(point_keys(key, indices))
    return apgd.start_point(x, apgd.draw_noise(keys, x.shape[1:], norm='Linf'), norm='Linf', eps=8 / 255)
  args = (jnp.zeros((n, 32, 32, 3)), jnp.arange(n, dtype=jnp.int32), 0)
  row = {'n': n}
  for name, options in (('default', {}), ('level 0', {'xla_backend_optimization_level': 0})):
    lowered = jax.jit(start_points).lower(*args)
    started = time.perf_counter()
    compiled = lowered.compile(compiler_options=options)
    row[f'{name} compile s'] = round(time.perf_counter() - started, 2)
    jax.block_until_ready(compiled(*args))
    started = time.perf_counter()
    for _ in range(10):
      jax.block_until_ready(compiled(*args))
    row[f'{name} run ms'] = round((time.perf_counter() - started) * 100, 2)
  print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
