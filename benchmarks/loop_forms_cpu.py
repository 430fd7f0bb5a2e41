"""Loop forms on this CPU: each attack as one jitted program with `lax` loops against the same iterations
called from the host (what the evaluation runs), and PGD-20 also with its steps unrolled.

  python benchmarks/loop_forms_cpu.py [WORKDIR=/tmp/rpat_smoke_bench] [N=64]

The model is the quick-start run's small CNN (`python -m rpat_jax.main --config=configs/smoke.py
--workdir=WORKDIR`), the points N uniform-noise images labelled with its own predictions. Each form runs
on all N points with nothing compacted (eps 1e-6: no point is fooled), so the figures compare the loop
forms alone. Seconds per iteration, second call (compiled). Prints one JSON line (docs/benchmarks.md, issue 15).
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
from rpat_jax import attacks  # pylint: disable=wrong-import-position
from rpat_jax.sharding import parallel  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import apgd, compacted, fab, square  # pylint: disable=wrong-import-position
from rpat_jax.bench import eval_bench  # pylint: disable=wrong-import-position

workdir = sys.argv[1] if len(sys.argv) > 1 else '/tmp/rpat_smoke_bench'
n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
config = smoke.get_config()
forward, variables, weights = eval_bench._variables(config, workdir, 'last', 10, (32, 32, 3))  # pylint: disable=protected-access
logits_fn = lambda images: forward.eval_logits(variables['params'], variables['batch_stats'], images).astype(jnp.float32)
x = np.random.default_rng(0).uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)
y = np.asarray(jax.jit(logits_fn)(x)).argmax(1).astype(np.int32)
xj, yj, key = jnp.asarray(x), jnp.asarray(y), jax.random.key(0)
keys = attacks.point_keys(key, jnp.arange(n))
EPS = 1e-6


def seconds(fn):
  jax.block_until_ready(fn())  # Compiles.
  started = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - started


def host(make, **options):
  attack = make(logits_fn, key, norm='Linf', eps=EPS, **options)
  return lambda: attack(compacted.Engine(logits_fn, parallel.make_mesh(), n), x, y, np.arange(n))[0]


rows = {}
iterations = 20
lax_apgd = jax.jit(lambda: apgd.apgd(logits_fn, xj, yj, keys, eps=EPS, n_iter=iterations)['x_adv'])
rows['apgd-ce'] = {'lax': seconds(lax_apgd), 'host': seconds(host(compacted.make_apgd, loss='ce', n_iter=iterations))}
lax_fab = jax.jit(lambda: fab.fab_targeted(logits_fn, xj, yj, eps=EPS, n_iter=iterations, n_target_classes=1)['x_adv'])
rows['fab-t'] = {'lax': seconds(lax_fab), 'host': seconds(host(compacted.make_fab, targeted=True, n_iter=iterations,
                                                                 n_target_classes=1))}
queries = 200
lax_square = jax.jit(lambda: square.square_attack(logits_fn, xj, yj, keys, eps=EPS, n_queries=queries)['x_adv'])
rows['square'] = {'lax': seconds(lax_square), 'host': seconds(host(compacted.make_square, n_queries=queries))}
for name in ('apgd-ce', 'fab-t'):
  rows[name] = {form: value / iterations for form, value in rows[name].items()}
rows['square'] = {form: value / queries for form, value in rows['square'].items()}

hyper = dict(norm='linf', eps=8 / 255, step_size=2 / 255, steps=20)
pgd_lax = jax.jit(lambda: attacks.pgd(logits_fn, keys, xj, yj, **hyper))
pgd_unrolled = jax.jit(lambda: attacks.pgd(logits_fn, keys, xj, yj, unroll=True, **hyper))
step = jax.jit(lambda d: attacks.pgd_step(logits_fn, xj, yj, d, norm='linf', eps=8 / 255, step_size=2 / 255))


def pgd_host():
  delta = jnp.zeros_like(xj)
  for _ in range(20):
    delta = step(delta)
  return delta


rows['pgd-20'] = {'lax': seconds(pgd_lax) / 20, 'unrolled': seconds(pgd_unrolled) / 20, 'host': seconds(pgd_host) / 20}
print(json.dumps({'model': 'small_cnn (quick start)', 'weights': weights, 'n': n,
                  'seconds_per_iteration': {name: {form: round(value, 4) for form, value in row.items()}
                                            for name, row in rows.items()}}))
