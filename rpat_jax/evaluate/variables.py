"""The model variables an evaluation attacks: a training checkpoint (optionally its weight average, or one
seed of a K-seed run) or variables converted from PyTorch (`python -m rpat_jax.convert --to`)."""

from typing import Optional

from rpat_jax import convert
from rpat_jax import experiment as experiment_lib
from rpat_jax import seeds
from rpat_jax.sharding import parallel
from rpat_jax import steps
from rpat_jax.run.checkpointing import Checkpoints


def restore_checkpoint(config, workdir: str, *, checkpoint: str = 'best', info=None):
  """(experiment, state, meta) of a training checkpoint: a K-seed run's state stacked over its seeds, so
  that its seeds are restored once and attacked one by one (`checkpoint_variables`).

  checkpoint: 'best', 'last' or an epoch number. info: the dataset's description (default: read from
  `config.data`).
  """
  experiment = experiment_lib.create(config, info=info, validate=False)
  which, epoch = (checkpoint, None) if checkpoint in ('best', 'last') else ('last', int(checkpoint))
  checkpoints = Checkpoints(workdir, keep=experiment.config.checkpoint.keep, read_only=True)
  # Restored replicated, whatever the layout it trained in: every process attacks with every seed's weights.
  target = experiment.abstract_state(parallel.replicated(experiment.mesh))
  state, meta = checkpoints.restore(target, which=which, epoch=epoch)
  return experiment, state, meta


def checkpoint_variables(experiment, state, meta, *, checkpoint: str = 'best', ema: bool = False,
                         seed_index: Optional[int] = None):
  """(forward, params, batch_stats, epoch) of a checkpoint `restore_checkpoint` restored; of seed
  `seed_index` (its place on the seed axis) for a K-seed run, where it is required. epoch: the epoch the
  weights are from; for `best` of a K-seed run that seed's own best epoch (slice i of `best/` is seed i's
  best, and its meta lists them)."""
  config = experiment.config
  epoch = int(meta['epoch'])
  if seeds.stacked(config):
    if seed_index is None or not 0 <= seed_index < seeds.count(config):
      raise ValueError(f'seed_index={seed_index}: a run of {seeds.count(config)} seeds has one per seed '
                       f'(0 to {seeds.count(config) - 1})')
    state = seeds.select(state, seed_index)
    if checkpoint == 'best':
      epoch = int(meta['best_epoch'][seed_index])
  elif seed_index not in (None, 0):
    raise ValueError(f'seed_index={seed_index}: a single run has one seed (index 0)')
  if ema:
    if state.ema is None:
      raise ValueError('--ema: this run has no weight average (train with --config.ema.enabled=True)')
    state = steps.averaged(state)
  return experiment.forward, state.params, state.batch_stats, epoch


def restore_variables(config, workdir: str, *, checkpoint: str = 'best', info=None,
                      variables_dir: Optional[str] = None, ema: bool = False, seed_index: Optional[int] = None):
  """(forward, params, batch_stats, epoch) of a training checkpoint, or of converted variables (epoch None).

  checkpoint: 'best', 'last' or an epoch number. info: the dataset's description (default: read from
  `config.data`). ema: the checkpoint's weight average instead of the online model. seed_index: which seed
  of a K-seed run (its place on the seed axis; required there), restored stacked and sliced.
  """
  if variables_dir:
    experiment = experiment_lib.create(config, info=info, validate=False)
    variables = convert.load_variables(variables_dir)
    return experiment.forward, variables['params'], variables['batch_stats'], None
  experiment, state, meta = restore_checkpoint(config, workdir, checkpoint=checkpoint, info=info)
  return checkpoint_variables(experiment, state, meta, checkpoint=checkpoint, ema=ema, seed_index=seed_index)
