"""Stride-2 input gradients, XLA's form against `phase_conv`'s pixel phases, on this CPU.

  python benchmarks/phase_conv_cpu.py layers            # ResNet-18's and the quick-start CNN's stride-2 layers
  python benchmarks/phase_conv_cpu.py MODEL N [WORKDIR]  # a network's input gradient, N images

`layers`: the forward pass and input gradient of sum(tanh(conv(x))) for each stride-2 layer shape
(batch, size, channels in -> out, kernel), both forms three times interleaved, milliseconds (median of
10 calls, the best of the three medians). MODEL: a model name at its initial weights, or `smoke` for the
quick-start run in WORKDIR (default /tmp/rpat_smoke_bench): APGD's cross-entropy input gradient of N
random images, with `convs.for_attacks` (phases) and with its phases replaced by XLA's stride-2
convolution, three times interleaved. Prints one line per row (docs/benchmarks.md).
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
import jax  # pylint: disable=wrong-import-position
from jax import lax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from configs import smoke  # pylint: disable=wrong-import-position
from rpat_jax.cpu import convs  # pylint: disable=wrong-import-position
from rpat_jax.cpu import phase_conv  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import apgd  # pylint: disable=wrong-import-position
from rpat_jax.bench import eval_bench  # pylint: disable=wrong-import-position

LAYERS = [(64, 32, 64, 128, 3), (64, 16, 128, 256, 3), (64, 8, 256, 512, 3), (64, 32, 64, 128, 1),
          (64, 16, 128, 256, 1), (64, 8, 256, 512, 1), (256, 32, 16, 32, 3), (256, 16, 32, 64, 3),
          (64, 32, 16, 32, 3), (64, 16, 32, 64, 3)]


def xla_stride2(inputs, kernel, padding, precision=None):
  return lax.conv_general_dilated(inputs, kernel, (2, 2), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  precision=precision)


def milliseconds(fn, *args, repeat=10):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeat):
    started = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - started)
  return 1000 * float(np.median(times))


def layers():
  rng = np.random.RandomState(0)
  for n, size, cin, cout, k in LAYERS:
    x = jnp.asarray(rng.randn(n, size, size, cin).astype(np.float32))
    w = jnp.asarray(rng.randn(k, k, cin, cout).astype(np.float32) * 0.05)
    padding = ((k // 2, k // 2),) * 2
    forms = {'xla': xla_stride2, 'phases': phase_conv.conv_stride2}
    grads = {name: jax.jit(jax.grad(lambda z, c=conv: jnp.sum(jnp.tanh(c(z, w, padding))))) for name, conv in forms.items()}
    times = {name: [] for name in forms}
    for _ in range(3):
      for name, grad in grads.items():
        times[name].append(milliseconds(grad, x))
    print(f'{n} x {size}x{size}x{cin} -> {cout} k{k}: ' + ', '.join(f'{name} {min(t):.2f} ms' for name, t in times.items()),
          flush=True)


def network(model, n, workdir):
  config = smoke.get_config()
  if model != 'smoke':
    config.model.name = model
  forward, variables, _ = eval_bench._variables(config, workdir if model == 'smoke' else None, 'last', 10, (32, 32, 3))  # pylint: disable=protected-access
  logits_fn = lambda images: forward.eval_logits(variables['params'], variables['batch_stats'], images).astype(jnp.float32)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.rand(n, 32, 32, 3).astype(np.float32))
  y = jnp.asarray(rng.randint(0, 10, n).astype(np.int32))
  phases = phase_conv.conv_stride2
  grads = {}
  for name, conv in (('phases', phases), ('xla', xla_stride2)):
    phase_conv.conv_stride2 = conv  # convs looks it up at trace time.
    grads[name] = jax.jit(lambda z, f=convs.for_attacks(logits_fn): apgd.loss_and_grad(f, 'ce', y, None, z))
    jax.block_until_ready(grads[name](x))
  phase_conv.conv_stride2 = phases
  times = {name: [] for name in grads}
  for _ in range(3):
    for name, grad in grads.items():
      times[name].append(milliseconds(grad, x, repeat=5))
  print(f'{model} input gradient, {n} images: ' + ', '.join(
      f'{name} {min(t):.1f} ms ({" / ".join(f"{v:.1f}" for v in t)})' for name, t in times.items()), flush=True)


if __name__ == '__main__':
  if sys.argv[1] == 'layers':
    layers()
  else:
    network(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else '/tmp/rpat_smoke_bench')
