"""The K-seed step's two forms on this CPU: `seed_compute=vmap` against `unroll`, with the single step.

  python benchmarks/seed_forms_cpu.py [K] [forms...]      # default: 4 vmap unroll

Prints compile seconds and ms a step (mean of 10 after one) for the quick-start config, K = 1 first.
"""

import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import smoke  # noqa: E402
from rpat_jax import experiment as experiment_lib  # noqa: E402
from rpat_jax import train  # noqa: E402


def bench(seeds: int, form: str, steps: int = 10) -> None:
  config = smoke.get_config()
  config.seeds, config.seed_compute = seeds, form
  experiment = experiment_lib.create(config)
  state = experiment.init_state()
  images, labels = experiment.train_data()
  started = time.perf_counter()
  step = train.compile_epoch_step(experiment, state, images, labels)
  compile_seconds = time.perf_counter() - started
  order = train.epoch_order(experiment)(state, 0)
  state, metrics = step(state, images, labels, order)
  jax.block_until_ready(metrics)
  started = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, images, labels, order)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - started) / steps
  print(f'K={seeds} {form}: compile {compile_seconds:.1f} s, {1000 * seconds:.0f} ms a step, '
        f'{1000 * seconds / seeds:.0f} ms per seed', flush=True)


if __name__ == '__main__':
  count = int(sys.argv[1]) if len(sys.argv) > 1 else 4
  bench(1, 'auto')
  for name in sys.argv[2:] or ['vmap', 'unroll']:
    bench(count, name)
