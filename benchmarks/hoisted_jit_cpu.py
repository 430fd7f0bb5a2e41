"""What embedding a model's weights in a compiled program costs: APGD's input-gradient program of a
network at its initial weights, compiled by jax.jit (weights closed over: constants of the program), by
`hoisted_jit.jit` (weights as arguments, what depends on them alone computed once in a prologue) and by
`hoisted_jit.jit(prologue=False)` (weights as arguments, everything in every call).

  python benchmarks/hoisted_jit_cpu.py [MODEL=resnet18] [N=64] [CALLS=3]

Prints, per form, the lowered program's text size and the seconds to lower and to compile (each form
three times, interleaved, each time a new function so nothing is cached in this process), and the
seconds per call, the mean of CALLS calls after one (docs/benchmarks.md).
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
from rpat_jax.cpu import convs  # pylint: disable=wrong-import-position
from rpat_jax.cpu import hoisted_jit  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import apgd  # pylint: disable=wrong-import-position
from rpat_jax.bench import eval_bench  # pylint: disable=wrong-import-position

model = sys.argv[1] if len(sys.argv) > 1 else 'resnet18'
n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
calls = int(sys.argv[3]) if len(sys.argv) > 3 else 3
config = smoke.get_config()
config.model.name = model
forward, variables, _ = eval_bench._variables(config, None, 'last', 10, (32, 32, 3))  # pylint: disable=protected-access
logits_fn = convs.for_attacks(
    lambda images: forward.eval_logits(variables['params'], variables['batch_stats'], images).astype(jnp.float32))
x, y = jnp.zeros((n, 32, 32, 3)), jnp.zeros((n,), jnp.int32)
forms = {'jax.jit': jax.jit, 'hoisted_jit.jit': hoisted_jit.jit,
         'hoisted_jit.jit(prologue=False)': lambda fn: hoisted_jit.jit(fn, prologue=False)}
rows = {form: [] for form in forms}
for _ in range(3):
  for form, wrap in forms.items():
    gradient = wrap(lambda z: apgd.loss_and_grad(logits_fn, 'ce', y, None, z))
    started = time.perf_counter()
    lowered = gradient.lower(x)
    lower_seconds = time.perf_counter() - started
    started = time.perf_counter()
    lowered.compile()
    compile_seconds = time.perf_counter() - started
    jax.block_until_ready(gradient(x))
    started = time.perf_counter()
    for _ in range(calls):
      jax.block_until_ready(gradient(x))
    rows[form].append({'text_mb': round(len(lowered.as_text()) / 1e6, 2), 'lower_s': round(lower_seconds, 2),
                       'compile_s': round(compile_seconds, 2),
                       'call_s': round((time.perf_counter() - started) / calls, 3)})
print(json.dumps({'model': model, 'n': n, 'parameters': int(sum(np.size(v) for v in jax.tree.leaves(variables))),
                  'runs': rows}))
