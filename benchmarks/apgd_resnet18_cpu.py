"""APGD-CE on a standard CIFAR ResNet-18: ours against the official `pyautoattack` on the same CPU, weights
and points, and what one of our APGD iterations costs against a jitted forward+backward pass.

  python benchmarks/apgd_resnet18_cpu.py [N=64] [EPS=0.5/255] [REPEAT=1]   # needs requirements-test.txt; $TFDS_DIR: cifar10_jpeg

The network is `resnet18` at its initial weights (seed 0), the points the first N CIFAR-10 (JPEG) test images
when $TFDS_DIR holds them (else uniform noise), labelled with the network's own predictions, so every
point is attacked. APGD-CE runs with the official hyperparameters (100 iterations, 1 restart), in one
batch of N, timed in two pairs that do the same work:
- the evaluation: ours `ensemble.evaluate` (clean pass, attack, a forward pass deciding what it fooled),
  the official `AutoAttack(version='custom', attacks=['apgd-ce']).run_standard_evaluation` (its checks, clean
  pass, `APGDAttack.perturb`, the same deciding pass);
- the attack alone: ours `ensemble.make_attack('apgd-ce', ...)` on a fresh `ensemble.attack_setup`, with
  its own clean pass, the official `APGDAttack.perturb`, which makes one too.
After our first (compiling) call, the four run in turn REPEAT times (the machine's speed drifts; taking
turns exposes all to the same drift); the seconds are the medians, and each run's seconds are listed.
Ours read their programs from JAX's persistent compilation cache, as the done-when benchmark's second call
does (a temporary directory unless one is configured); the first call's seconds, compiles included, are
printed too. The gradient and iteration costs are timed on the network as written and as evaluation runs it
(`convs.for_attacks`). Prints one JSON line (docs/benchmarks.md, issue 15).
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
  test points, labelled with its own predictions (shared with benchmarks/apgd_resnet18_compiles.py)."""
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
  from pyautoattack import AutoAttack  # pylint: disable=import-outside-toplevel
  from pyautoattack.autopgd_base import APGDAttack  # pylint: disable=import-outside-toplevel
  n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
  eps = float(eval(sys.argv[2])) if len(sys.argv) > 2 else 0.5 / 255  # pylint: disable=eval-used
  repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 1
  torch.set_num_threads(2)
  config, x, y, points, weights, variables, logits_fn = problem(n)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  costs = {}
  for form, fn in (('as written', logits_fn), ('as evaluated', convs.for_attacks(logits_fn))):
    gradient = jax.jit(lambda z, f=fn: apgd.loss_and_grad(f, 'ce', yj, None, z))
    carry = jax.jit(lambda z, f=fn: apgd.run_start(f, xj, yj, None, z, eps=eps, loss='ce'))(xj)
    iteration = jax.jit(lambda c, i, f=fn: apgd.run_iteration(f, xj, yj, None, c, i, norm='Linf', eps=eps, loss='ce',
                                                              n_iter=100))
    costs[form] = {'jitted_forward_backward_seconds': round(seconds(lambda: gradient(xj)), 3),
                   'apgd_iteration_seconds': round(seconds(lambda: iteration(carry, 5)), 3)}

  options = {'n_iter': 100, 'n_restarts': 1}
  evaluate = lambda: ensemble.evaluate(logits_fn, x, y, eps=eps, version='custom', attacks=['apgd-ce'], batch_size=n,
                                       attack_options={'apgd-ce': options})

  def attack_alone():  # As `ensemble.evaluate` builds it; clean=None: the attack makes its own clean pass.
    fast, engine, gradient_logits_fn = ensemble.attack_setup(logits_fn, n)
    attack = ensemble.make_attack('apgd-ce', fast, norm='Linf', eps=eps, seed=0, options=options,
                                  gradient_logits_fn=gradient_logits_fn)
    return attack(engine, x, y, np.arange(n))[0]

  eval_bench._compilation_cache()  # pylint: disable=protected-access
  started = time.perf_counter()
  evaluate()
  ours_first = time.perf_counter() - started

  model = torch_step.build_model(config.model, 10, jax.device_get(variables), torch.device('cpu')).eval()
  xt = torch.as_tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  yt = torch.as_tensor(y.astype(np.int64))
  perturb = APGDAttack(model, n_restarts=1, n_iter=100, eps=eps, norm='Linf', seed=0, loss='ce', device='cpu')
  ensemble_official = AutoAttack(model, attacks=['apgd-ce'], version='custom', eps=eps, norm='Linf', seed=0,
                                 device='cpu')
  ensemble_official.apgd.n_restarts, ensemble_official.apgd.n_iter = 1, 100
  to_nhwc = lambda t: np.ascontiguousarray(t.detach().numpy().transpose(0, 2, 3, 1))
  runs = {'ours_evaluate': evaluate,
          'official_autoattack': lambda: to_nhwc(ensemble_official.run_standard_evaluation(xt, yt, batch_size=n)[0]),
          'ours_attack': attack_alone,
          'official_perturb': lambda: to_nhwc(perturb.perturb(xt, yt))}
  seconds_of, found = {name: [] for name in runs}, {}
  for _ in range(repeat):
    for name, run in runs.items():
      started = time.perf_counter()
      found[name] = run()
      seconds_of[name].append(round(time.perf_counter() - started, 1))
  median = {name: float(np.median(values)) for name, values in seconds_of.items()}
  predict = lambda images: np.asarray(logits_fn(images)).argmax(1)
  robust = {'ours_evaluate': found['ours_evaluate']['robust'],
            **{name: predict(found[name]) == y for name in ('official_autoattack', 'ours_attack', 'official_perturb')}}
  print(json.dumps({
      'model': 'resnet18', 'weights': weights, 'points': points, 'n': n, 'eps': eps,
      'costs': costs, 'iteration_as_evaluated_over_gradient_as_written': round(
          costs['as evaluated']['apgd_iteration_seconds'] / costs['as written']['jitted_forward_backward_seconds'], 2),
      'ours_evaluate_seconds_first_call': round(ours_first, 1),
      'seconds': {name: round(value, 1) for name, value in median.items()}, 'runs': seconds_of,
      'speedup_evaluation': round(median['official_autoattack'] / median['ours_evaluate'], 2),
      'speedup_attack_alone': round(median['official_perturb'] / median['ours_attack'], 2),
      'robust': {name: float(value.mean()) for name, value in robust.items()},
      'agreement_evaluation': float((robust['ours_evaluate'] == robust['official_autoattack']).mean()),
      'agreement_attack_alone': float((robust['ours_attack'] == robust['official_perturb']).mean()),
      'ours_images_per_point': found['ours_evaluate']['evaluations']['per_point']}))


if __name__ == '__main__':
  main()
