"""One ResNet-18 input gradient and forward pass, ours (as the attacks run it) against PyTorch's, interleaved.

  python benchmarks/resnet18_gradient_cpu.py [N=64] [ROUNDS=3]   # needs requirements-test.txt; $TFDS_DIR: cifar10_jpeg

The network and points are `benchmarks/apgd_resnet18_cpu.py`'s (`problem`). Ours: APGD's cross-entropy input
gradient and the forward pass, jitted, with `convs.for_attacks`; PyTorch's: the same loss's input
gradient (`torch.autograd.grad`) and a forward pass under no_grad, on the same weights (2 threads). Each
round times the four, mean of 5 calls after one; prints one JSON line per round, seconds (docs/benchmarks.md).
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from apgd_resnet18_cpu import problem  # pylint: disable=wrong-import-position
from rpat_jax.cpu import convs  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import apgd  # pylint: disable=wrong-import-position
from rpat_jax.bench import torch_step  # pylint: disable=wrong-import-position


def seconds(fn, repeat=5):
  fn()
  started = time.perf_counter()
  for _ in range(repeat):
    fn()
  return round((time.perf_counter() - started) / repeat, 3)


def main():
  import torch  # pylint: disable=import-outside-toplevel
  n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
  rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
  torch.set_num_threads(2)
  config, x, y, _, _, variables, logits_fn = problem(n)
  fn = convs.for_attacks(logits_fn)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  gradient = jax.jit(lambda z: apgd.loss_and_grad(fn, 'ce', yj, None, z))
  forward = jax.jit(fn)
  model = torch_step.build_model(config.model, 10, jax.device_get(variables), torch.device('cpu')).eval()
  xt = torch.as_tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  yt = torch.as_tensor(y.astype(np.int64))

  def torch_gradient():
    z = xt.clone().requires_grad_(True)
    return torch.autograd.grad(torch.nn.functional.cross_entropy(model(z), yt, reduction='sum'), z)[0]

  def torch_forward():
    with torch.no_grad():
      return model(xt)
  for _ in range(rounds):
    print(json.dumps({'n': n, 'ours_gradient': seconds(lambda: jax.block_until_ready(gradient(xj))),
                      'torch_gradient': seconds(torch_gradient),
                      'ours_forward': seconds(lambda: jax.block_until_ready(forward(xj))),
                      'torch_forward': seconds(torch_forward)}), flush=True)


if __name__ == '__main__':
  main()
