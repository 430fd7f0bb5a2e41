"""Where a Square query's time goes on the quick-start model, and its first convolution against PyTorch's.

  python benchmarks/square_forward_cpu.py [WORKDIR=/tmp/rpat_smoke_bench] [B=64]   # needs requirements-test.txt

WORKDIR is a quick-start run (`python -m rpat_jax.main --config=configs/smoke.py --workdir=WORKDIR`).
Prints milliseconds per query over blocks of 20 queries at batch B (as `compacted.make_square` runs them):
the forward pass alone, the candidates alone (Square's sampling and window updates) and a whole query;
then the first convolution (3 -> 16 channels, 32x32) as XLA compiles it, with its input zero-padded to
8 channels, as patches times a matrix (im2col), and PyTorch's on 1 and 2 threads; then the whole network's
forward pass and input gradient with each form of that first layer (docs/benchmarks.md).
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
import torch  # pylint: disable=wrong-import-position

from configs import smoke  # pylint: disable=wrong-import-position
from rpat_jax.attacks import point_keys  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import square  # pylint: disable=wrong-import-position
from rpat_jax.bench import eval_bench  # pylint: disable=wrong-import-position

workdir = sys.argv[1] if len(sys.argv) > 1 else '/tmp/rpat_smoke_bench'
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
QUERIES = 20


def milliseconds(fn, *args, rounds=5, repeats=10):
  """The lowest of `rounds` medians of `repeats` calls: this machine's speed drifts by tens of percent
  within a minute, and the lowest median is the figure a rerun reproduces best."""
  jax.block_until_ready(fn(*args))
  medians = []
  for _ in range(rounds):
    times = []
    for _ in range(repeats):
      started = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - started)
    medians.append(np.median(times))
  return float(min(medians)) * 1e3


config = smoke.get_config()
images, labels, _ = eval_bench._points(config, batch, 32, 10)  # pylint: disable=protected-access
forward, variables, _ = eval_bench._variables(config, workdir, 'last', 10, images.shape[1:])  # pylint: disable=protected-access
logits_fn = lambda x: forward.eval_logits(variables['params'], variables['batch_stats'], x).astype(jnp.float32)
x = jnp.asarray(images, jnp.float32)
y = jnp.asarray(labels).astype(jnp.int32)
_, loop_keys = square.split_keys(point_keys(jax.random.key(0), jnp.arange(batch)))
everyone = jnp.ones((batch,), bool)
options = dict(norm='Linf', eps=8 / 255, n_queries=5000, p_init=0.8)


@jax.jit
def forwards(x):
  return jax.lax.fori_loop(0, QUERIES, lambda i, total: total + logits_fn(x + i * 1e-6).sum(), 0.0)


@jax.jit
def candidates(x):
  def body(_, state):
    iteration, x_best = state
    return iteration + 1, square.square_candidates(x, x_best, loop_keys, iteration, **options)
  return jax.lax.fori_loop(0, QUERIES, body, (jnp.int32(0), x))


@jax.jit
def queries(x):
  state = (jnp.int32(0), x, jnp.full((batch,), 10.0), jnp.zeros((batch,), jnp.int32))
  step = lambda _, state: square.square_step(logits_fn, x, y, loop_keys, everyone, state, **options)
  return jax.lax.fori_loop(0, QUERIES, step, state)


row = {'batch': batch, 'query_ms': {name: milliseconds(fn, x) / QUERIES for name, fn in
                                    (('forward', forwards), ('candidates', candidates), ('whole', queries))}}

kernel = variables['params']['conv0']['kernel']
convolve = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
pad8 = lambda x, w: convolve(jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, 5))), jnp.pad(w, ((0, 0), (0, 0), (0, 5), (0, 0))))


def im2col(x, w):
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([padded[:, i:i + 32, j:j + 32, :] for i in range(3) for j in range(3)], -1)
  return patches @ w.reshape(-1, w.shape[-1])


reference = jax.jit(convolve)(x, kernel)
first = {}
for name, fn in (('xla', convolve), ('xla_input_padded_to_8', pad8), ('im2col', im2col)):
  np.testing.assert_allclose(jax.jit(fn)(x, kernel), reference, atol=1e-5)
  first[name] = milliseconds(jax.jit(fn), x, kernel)
torch_x = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
torch_w = torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())
with torch.no_grad():
  for threads in (1, 2):
    torch.set_num_threads(threads)
    first[f'torch_{threads}_threads'] = milliseconds(
        lambda: torch.nn.functional.conv2d(torch_x, torch_w, padding=1))
row['first_conv_ms'] = first


def network(images, first_conv):
  """The quick-start CNN in eval mode, written out, with `first_conv` for its first layer."""
  params, stats = variables['params'], variables['batch_stats']
  h = images
  for i, stride in enumerate((1, 2, 2)):
    w = params[f'conv{i}']['kernel']
    h = first_conv(h, w) if i == 0 else jax.lax.conv_general_dilated(
        h, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    scale = params[f'bn{i}']['scale'] * jax.lax.rsqrt(stats[f'bn{i}']['var'] + 1e-5)
    h = jax.nn.relu((h - stats[f'bn{i}']['mean']) * scale + params[f'bn{i}']['bias'])
  head = params['Head_0']['head']
  return h.mean((1, 2)) @ head['kernel'] + head['bias']


whole = {}
for name, fn in (('xla', convolve), ('xla_input_padded_to_8', pad8), ('im2col', im2col)):
  logits = jax.jit(lambda images, fn=fn: network(images, fn))
  np.testing.assert_allclose(logits(x), jax.jit(logits_fn)(x), atol=1e-4)
  loss = lambda images, fn=fn: -jax.nn.log_softmax(network(images, fn))[jnp.arange(batch), y].sum()
  whole[name] = {'forward': milliseconds(logits, x), 'forward_and_input_gradient': milliseconds(jax.jit(jax.grad(loss)), x)}
row['network_ms_by_first_conv'] = whole
rounded = lambda value: ({k: rounded(v) for k, v in value.items()} if isinstance(value, dict) else
                         round(value, 2) if isinstance(value, float) else value)
print(json.dumps(rounded(row)))
