"""Thin-input (RGB) stride-1 convolutions' input gradients, XLA's form against `patch_conv`'s patch form,
on this CPU: the quick-start CNN's APGD input gradient and forward pass at several batch sizes.

  python benchmarks/patch_conv_cpu.py [WORKDIR=/tmp/rpat_smoke_bench] [ROUNDS=3]

The network is the quick-start run's (WORKDIR, its last checkpoint) on its own synthetic test images, as
the attacks run it (`convs.for_attacks`, in `chunks`' chunks for gradients). 'patch' is as
shipped; 'xla' replaces `patch_conv.conv_thin` with XLA's convolution on the same padded channels (the code
before it). For each batch size, the milliseconds of APGD's cross-entropy input gradient and of the forward
pass (median of 10 calls), both forms ROUNDS times interleaved; prints one JSON line per round and the best
of the rounds (docs/benchmarks.md).
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from configs import smoke  # pylint: disable=wrong-import-position
from phase_conv_cpu import milliseconds  # pylint: disable=wrong-import-position
from rpat_jax.cpu import chunks  # pylint: disable=wrong-import-position
from rpat_jax.cpu import convs  # pylint: disable=wrong-import-position
from rpat_jax.cpu import patch_conv  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import apgd  # pylint: disable=wrong-import-position
from rpat_jax.bench import eval_bench  # pylint: disable=wrong-import-position

BATCHES = (32, 72, 256)


def main():
  workdir = sys.argv[1] if len(sys.argv) > 1 else '/tmp/rpat_smoke_bench'
  rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
  config = smoke.get_config()
  x, _, _ = eval_bench._points(config, max(BATCHES), 32, 10)  # pylint: disable=protected-access
  forward, variables, _ = eval_bench._variables(config, workdir, 'last', 10, x.shape[1:])  # pylint: disable=protected-access
  logits_fn = lambda images: forward.eval_logits(variables['params'], variables['batch_stats'],
                                                 images).astype(jnp.float32)
  patched = patch_conv.conv_thin
  xla = lambda inputs, kernel, padding, channels=8, precision=None: patch_conv._convolve(  # pylint: disable=protected-access
      inputs, kernel, padding, channels, precision)
  programs = {}
  for form in ('patch', 'xla'):
    patch_conv.conv_thin = patched if form == 'patch' else xla  # Read when the programs are traced, below.
    fn = convs.for_attacks(logits_fn)
    gradient_fn = chunks.for_gradients(fn, 1)
    for batch in BATCHES:
      images, labels = jnp.asarray(x[:batch]), jnp.zeros(batch, jnp.int32)
      gradient = jax.jit(lambda z, y, f=gradient_fn: apgd.loss_and_grad(f, 'ce', y, None, z))
      jax.block_until_ready(gradient(images, labels))
      logits = jax.jit(fn)
      jax.block_until_ready(logits(images))
      programs[form, batch] = (gradient, logits, images, labels)
  patch_conv.conv_thin = patched
  best = {}
  for _ in range(rounds):
    row = {}
    for (form, batch), (gradient, logits, images, labels) in programs.items():
      times = (round(milliseconds(gradient, images, labels), 2), round(milliseconds(logits, images), 2))
      row[f'{form} {batch}'] = times
      best[f'{form} {batch}'] = tuple(min(a, b) for a, b in zip(best.get(f'{form} {batch}', times), times))
    print(json.dumps({'gradient / forward ms': row}), flush=True)
  print(json.dumps({'best gradient / forward ms': best}))


if __name__ == '__main__':
  main()
