"""Run by parallel_test in a subprocess with N simulated devices (XLA_FLAGS): writes results to an .npz.

  python tests/multidevice_worker.py steps OUT.npz   # 3 train steps of the tiny config: params, metrics
  python tests/multidevice_worker.py eval OUT.npz    # trainer evaluation sums, AutoAttack per point
  python tests/multidevice_worker.py eval_and_hoisted OUT.npz   # the same, then with every program's weights hoisted
  python tests/multidevice_worker.py seeds_batch OUT.npz   # 4 seeds, each seed's batch split: 3 steps and the evaluation
  python tests/multidevice_worker.py seeds_whole OUT.npz   # the same with whole seeds per device (seed_sharding=seeds)
  python tests/multidevice_worker.py seeds_whole_unrolled OUT.npz   # the same, each device's seeds unrolled
  launch/local.sh 2 1 python tests/multidevice_worker.py mismatch -   # each process a different config
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from helpers import tiny_config  # noqa: E402
from rpat_jax import autoattack, data, experiment, train  # noqa: E402
from rpat_jax.cpu import hoisted_jit  # noqa: E402
from rpat_jax.sharding import parallel  # noqa: E402


def _setup():
  setup = experiment.create(tiny_config(**{'batch_size': 64, 'eval.batch_size': 32, 'eval.num_examples': 0}))
  return setup, setup.init_state()


def train_steps(out: str):
  setup, state = _setup()
  images, labels = setup.train_data()
  step = jax.jit(train.make_epoch_step(setup), out_shardings=(parallel.replicated(setup.mesh),) * 2)
  order = train.epoch_order(setup)(state, 0)
  losses = []
  for _ in range(3):
    state, metrics = step(state, images, labels, order)
    losses.append(float(metrics['loss']))
  leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))
  np.savez(out, flat=np.concatenate([np.ravel(leaf) for leaf in leaves]), losses=np.array(losses),
           devices=jax.device_count())


def evaluation(out: str):
  setup, state = _setup()
  config, forward = setup.config, setup.forward
  eval_data = setup.test_data()
  sums = jax.device_get(train.compile_evaluate(setup, state, eval_data)(state, *eval_data))
  images, labels = data.load_rows(config.data, 'test', np.arange(setup.info.num_test))
  x = images.astype(np.float32) / 255
  # Running statistics of these images, so that predictions vary by point: 30 train-mode forwards.
  moved = lambda stats: jax.lax.fori_loop(0, 30, lambda _, s: forward.train_logits(state.params, s, x)[1], stats)
  stats = jax.jit(moved)(state.batch_stats)
  logits_fn = lambda images: forward.eval_logits(state.params, stats, images)
  predicted = np.asarray(jax.jit(logits_fn)(x)).argmax(1)  # As labels: every point starts robust.
  aa = autoattack.evaluate(logits_fn, x, predicted, norm='Linf', eps=6 / 255,
                           version='custom', attacks=['apgd-ce', 'square'], batch_size=24,
                           attack_options={'apgd-ce': {'n_iter': 5, 'n_restarts': 2}, 'square': {'n_queries': 20}})
  np.savez(out, clean=sums['clean_correct'], pgd=sums['pgd_correct'], count=sums['count'],
           robust=aa['robust'], y_adv=aa['y_adv'], devices=jax.device_count())


def evaluation_and_hoisted(out: str):
  """`evaluation` into OUT, then again into OUT_hoisted.npz with the weights of every `hoisted_jit` program
  passed as arguments and their transforms in the prologue (the tiny model's weights are below MIN_BYTES, so
  `evaluation` embeds them): in one process, so what does not hoist compiles once."""
  evaluation(out)
  hoisted_jit.MIN_BYTES = 0  # Read when a program is wrapped: every attack of the second run.
  evaluation(out.replace('.npz', '_hoisted.npz'))


def seed_steps(out: str, sharding: str, compute: str = 'vmap'):
  """3 train steps of 4 seeds (vectorised: the accelerators' form; or unrolled: the CPU's) and the per-epoch
  evaluation."""
  setup = experiment.create(tiny_config(**{'seeds': 4, 'seed_sharding': sharding, 'seed_compute': compute,
                                           'eval.num_examples': 0}))
  state = setup.init_state()
  spec = jax.tree.leaves(state.params)[0].sharding.spec
  images, labels = setup.train_data()
  step = train.jit_epoch_step(setup)
  order = train.epoch_order(setup)(state, 0)
  losses = []
  for _ in range(3):
    state, metrics = step(state, images, labels, order)
    losses.append(np.asarray(metrics['loss']))
  eval_data = setup.test_data()
  sums = jax.device_get(train.compile_evaluate(setup, state, eval_data)(state, *eval_data))
  leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))
  np.savez(out, flat=np.concatenate([np.ravel(leaf) for leaf in leaves]), losses=np.array(losses),
           clean=sums['clean_correct'], devices=jax.device_count(), split=str(spec))


def mismatch(_):
  """Joins with local.sh's flags, then compares a config that differs by process: must fail in one line."""
  from rpat_jax.sharding import distributed
  flags = dict(arg[2:].split('=', 1) for arg in sys.argv[3:])
  distributed.initialize('auto', coordinator=flags['coordinator_address'], num_processes=int(flags['num_processes']),
                         process_id=int(flags['process_id']), timeout=int(flags['init_timeout']))
  try:
    distributed.check_same_everywhere('--config', {'seed': jax.process_index()})
  except distributed.DistributedError as error:
    print(f'rpat_jax: error: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  modes = {'steps': train_steps, 'eval': evaluation, 'eval_and_hoisted': evaluation_and_hoisted, 'mismatch': mismatch,
           'seeds_batch': lambda out: seed_steps(out, 'batch'), 'seeds_whole': lambda out: seed_steps(out, 'seeds'),
           'seeds_whole_unrolled': lambda out: seed_steps(out, 'seeds', 'unroll')}
  modes[sys.argv[1]](sys.argv[2])
