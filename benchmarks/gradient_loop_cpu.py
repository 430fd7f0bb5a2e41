"""What a `lax` loop costs a network's input gradient on XLA:CPU: ResNet-18 (initial weights, seed 0),
batch 64, seconds per gradient as its own program, in a `lax.fori_loop`, in the loop unrolled, and one
iteration of APGD's `lax` form (`apgd.single_run`).

  python benchmarks/gradient_loop_cpu.py [BATCH=64] [MODEL=resnet18]

Prints one JSON line (docs/benchmarks.md, issue 15).
"""
import json
import os
import sys
import time

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from rpat_jax import models  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import apgd, losses  # pylint: disable=wrong-import-position

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
name = sys.argv[2] if len(sys.argv) > 2 else 'resnet18'
model = models.create_model(name, 10)
x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (batch, 32, 32, 3)).astype(np.float32))
variables = model.init(jax.random.key(0), x[:1], train=False)
logits_fn = lambda z: model.apply(variables, z, train=False)
y = jnp.argmax(jax.jit(logits_fn)(x), 1)
gradient = lambda z: jax.grad(lambda v: losses.cross_entropy(logits_fn(v), y).sum())(z)
STEPS = 5


def seconds(fn, *args, repeat=2):
  jax.block_until_ready(fn(*args))
  started = time.perf_counter()
  for _ in range(repeat):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - started) / repeat


loop = lambda unroll: jax.jit(lambda z: jax.lax.fori_loop(0, STEPS, lambda i, v: v + 1e-3 * jnp.sign(gradient(v)), z,
                                                          unroll=unroll))
run = jax.jit(lambda z: apgd.single_run(logits_fn, z, y, None, z, norm='Linf', eps=0.5 / 255, loss='ce',
                                        n_iter=STEPS)[0])
print(json.dumps({'model': name, 'batch': batch, 'seconds': {
    'gradient_own_program': round(seconds(jax.jit(gradient), x), 3),
    'gradient_in_fori_loop': round(seconds(loop(False), x, repeat=1) / STEPS, 3),
    'gradient_in_unrolled_loop': round(seconds(loop(True), x, repeat=1) / STEPS, 3),
    'apgd_lax_single_run_iteration': round(seconds(run, x, repeat=1) / STEPS, 3)}}))
