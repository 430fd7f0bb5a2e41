"""APGD-CE on a standard CIFAR ResNet-18: ours against the official `pyautoattack` on the same CPU, weights
and points, and what one of our APGD iterations costs against a jitted forward+backward pass.

  python docs/apgd_resnet18_cpu.py [N=64] [EPS=0.5/255] [REPEAT=1]   # needs requirements-test.txt; $TFDS_DIR: cifar10_jpeg

The network is `resnet18` at its initial weights (seed 0), the points the first N CIFAR-10 (JPEG) test images
when $TFDS_DIR holds them (else uniform noise), labelled with the network's own predictions, so every
point is attacked. APGD-CE runs with the official hyperparameters (100 iterations, 1 restart), in one
batch of N. After our first (compiling) call, ours and the official attack run alternately REPEAT times
(the machine's speed drifts; alternating exposes both to the same drift); the seconds are the medians,
and each run's seconds are listed. Ours read their programs from JAX's persistent compilation cache, as
the done-when benchmark's second call does (a temporary directory unless one is configured); the first
call's seconds, compiles included, are printed too. The gradient and iteration costs are timed on the network as written
and as evaluation runs it (`cpu_convs.for_attacks`). Prints one JSON line (docs/benchmarks.md, issue 15).
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
from rpat_jax import cpu_convs  # pylint: disable=wrong-import-position
from rpat_jax.autoattack import apgd, ensemble  # pylint: disable=wrong-import-position
from rpat_jax.bench import eval_bench, torch_step  # pylint: disable=wrong-import-position

def seconds(fn, repeat=3):
  jax.block_until_ready(fn())
  started = time.perf_counter()
  for _ in range(repeat):
    jax.block_until_ready(fn())
  return (time.perf_counter() - started) / repeat


def problem(n: int):
  """(config, x, y, points, weights, variables, logits_fn): ResNet-18 at its initial weights on the first n
  test points, labelled with its own predictions (shared with docs/apgd_resnet18_compiles.py)."""
  config = smoke.get_config()
  config.model.name = 'resnet18'
  if os.environ.get('TFDS_DIR'):
    config.data.name, config.data.data_dir = 'cifar10_jpeg', os.environ['TFDS_DIR']
  x, _, points = eval_bench._points(config, n, 32, 10)  # pylint: disable=protected-access
  forward, variables, weights = eval_bench._variables(config, None, 'last', 10, x.shape[1:])  # pylint: disable=protected-access
  logits_fn = lambda images: forward.eval_logits(variables['params'], variables['batch_stats'],
                                                 images).astype(jnp.float32)
  y = np.asarray(jax.jit(logits_fn)(x)).argmax(1).astype(np.int32)
  return config, x, y, points, weights, variables, logits_fn


def main():
  import torch  # pylint: disable=import-outside-toplevel
  from pyautoattack.autopgd_base import APGDAttack  # pylint: disable=import-outside-toplevel
  n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
  eps = float(eval(sys.argv[2])) if len(sys.argv) > 2 else 0.5 / 255  # pylint: disable=eval-used
  repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 1
  torch.set_num_threads(2)
  config, x, y, points, weights, variables, logits_fn = problem(n)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  costs = {}
  for form, fn in (('as written', logits_fn), ('as evaluated', cpu_convs.for_attacks(logits_fn))):
    gradient = jax.jit(lambda z, f=fn: apgd.loss_and_grad(f, 'ce', yj, None, z))
    carry = jax.jit(lambda z, f=fn: apgd.run_start(f, xj, yj, None, z, eps=eps, loss='ce'))(xj)
    iteration = jax.jit(lambda c, i, f=fn: apgd.run_iteration(f, xj, yj, None, c, i, norm='Linf', eps=eps, loss='ce',
                                                              n_iter=100))
    costs[form] = {'jitted_forward_backward_seconds': round(seconds(lambda: gradient(xj)), 3),
                   'apgd_iteration_seconds': round(seconds(lambda: iteration(carry, 5)), 3)}

  options = {'apgd-ce': {'n_iter': 100, 'n_restarts': 1}}
  run = lambda: ensemble.evaluate(logits_fn, x, y, eps=eps, version='custom', attacks=['apgd-ce'], batch_size=n,
                                  attack_options=options)
  eval_bench._compilation_cache()  # pylint: disable=protected-access
  started = time.perf_counter()
  ours = run()
  ours_first = time.perf_counter() - started

  model = torch_step.build_model(config.model, 10, jax.device_get(variables), torch.device('cpu')).eval()
  xt = torch.as_tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  yt = torch.as_tensor(y.astype(np.int64))
  attack = APGDAttack(model, n_restarts=1, n_iter=100, eps=eps, norm='Linf', seed=0, loss='ce', device='cpu')
  ours_runs, official_runs = [], []
  for _ in range(repeat):
    started = time.perf_counter()
    ours = run()
    ours_runs.append(round(time.perf_counter() - started, 1))
    started = time.perf_counter()
    x_official = attack.perturb(xt, yt)
    official_runs.append(round(time.perf_counter() - started, 1))
  ours_seconds, official_seconds = float(np.median(ours_runs)), float(np.median(official_runs))
  robust_official = np.asarray(logits_fn(np.ascontiguousarray(x_official.detach().numpy().transpose(0, 2, 3, 1)))).argmax(1) == y
  print(json.dumps({
      'model': 'resnet18', 'weights': weights, 'points': points, 'n': n, 'eps': eps,
      'costs': costs, 'iteration_as_evaluated_over_gradient_as_written': round(
          costs['as evaluated']['apgd_iteration_seconds'] / costs['as written']['jitted_forward_backward_seconds'], 2),
      'ours_seconds': round(ours_seconds, 1), 'ours_seconds_first_call': round(ours_first, 1),
      'official_seconds': round(official_seconds, 1), 'ours_runs': ours_runs, 'official_runs': official_runs,
      'speedup': round(official_seconds / ours_seconds, 2),
      'ours_robust': ours['robust_acc'], 'official_robust': float(robust_official.mean()),
      'agreement': float((robust_official == ours['robust']).mean()),
      'ours_images_per_point': ours['evaluations']['per_point']}))


if __name__ == '__main__':
  main()
