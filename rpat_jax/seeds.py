"""K seeds of one config trained together: the seed axis of a multi-seed run.

`config.seeds = K` trains seeds `config.seed`, ..., `config.seed + K - 1` in one compiled program. Every leaf
of the train state gets a leading axis of K; slice i (`select`) starts as the single run of seed
`config.seed + i` and makes its random draws, and follows it to float rounding (docs/training.md). K = 1 is
a single run: no seed axis, so single runs and their checkpoints are what they always were. The evaluation
tools write a K-seed run's results per seed, in `seed_<s>/` (`subdir`), and read a single run's where they
always did.
"""

from typing import List, Optional, Sequence, Tuple

import jax
import numpy as np

from rpat_jax import cpu


def count(config) -> int:
  """K: how many seeds the run trains (1 for a config recorded before the key existed)."""
  return int(config.get('seeds', 1))


def stacked(config) -> bool:
  """Whether the run's state has a seed axis (K > 1)."""
  return count(config) > 1


def compute(config) -> str:
  """How one program computes K seeds (`config.seed_compute`): 'vmap' or 'unroll'; 'auto' asks the CPU gate
  (`rpat_jax.cpu.seed_compute`: 'unroll' on a CPU, 'vmap' elsewhere)."""
  choice = config.get('seed_compute', 'auto')
  if choice != 'auto':
    return choice
  return cpu.seed_compute()


def layout(config, device_count: int) -> str:
  """Where a K-seed run's seeds live on `device_count` devices (`config.seed_sharding`): 'batch' (each seed's
  batch split over them) or 'seeds' (whole seeds per device). 'auto' is 'seeds' where K is a multiple of
  several devices (the compilers' choice: docs/benchmarks.md), else 'batch'."""
  choice = config.get('seed_sharding', 'auto')
  if not stacked(config):
    return 'batch'  # A single run has no seed axis to place.
  if choice != 'auto':
    return choice
  return 'seeds' if device_count > 1 and count(config) % device_count == 0 else 'batch'


def require_one(config, wanted: Optional[Sequence[int]], what: str) -> None:
  """For the single-result wrappers of evaluate and perception: a K-seed run has one `what` per seed."""
  if stacked(config) and len(wanted or ()) != 1:
    raise ValueError(f'a run of {count(config)} seeds has a {what} per seed: give one (seeds=[s]) or call run_seeds')


def values(config) -> List[int]:
  """The seeds of the run, in the order of the seed axis."""
  return [config.seed + index for index in range(count(config))]


def select(tree, index: int):
  """Slice `index` of the seed axis of every leaf: the state (or metrics) of one seed."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


def step_of(state) -> int:
  """The train state's step count (the same for every seed), read from this process's first shard."""
  return int(np.asarray(state.step.addressable_data(0)).reshape(-1)[0])


def subdir(config, seed: int) -> str:
  """Where a K-seed run's per-seed results go under an output directory ('' for a single run)."""
  return f'seed_{seed}' if stacked(config) else ''


def choose(config, wanted: Optional[Sequence[int]]) -> List[Tuple[int, int]]:
  """(index on the seed axis, seed) of the seeds `wanted` (None: all of the run's), in the given order.

  Raises ValueError in one line for a seed the run did not train.
  """
  run = values(config)
  if not wanted:
    return list(enumerate(run))
  unknown = [seed for seed in wanted if seed not in run]
  if unknown:
    raise ValueError(f'--seeds={",".join(map(str, wanted))}: the run trained seeds {", ".join(map(str, run))}, '
                     f'not {", ".join(map(str, unknown))}')
  return [(run.index(seed), seed) for seed in wanted]
