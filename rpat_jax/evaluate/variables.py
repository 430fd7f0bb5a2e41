"""The model variables an evaluation attacks: a training checkpoint (optionally its weight average) or
variables converted from PyTorch (`python -m rpat_jax.convert --to`)."""

from typing import Optional

from rpat_jax import convert
from rpat_jax import experiment as experiment_lib
from rpat_jax import steps
from rpat_jax.run.checkpointing import Checkpoints


def restore_variables(config, workdir: str, *, checkpoint: str = 'best', info=None,
                      variables_dir: Optional[str] = None, ema: bool = False):
  """(forward, params, batch_stats, epoch) of a training checkpoint, or of converted variables (epoch None).

  checkpoint: 'best', 'last' or an epoch number. info: the dataset's description (default: read from
  `config.data`). ema: the checkpoint's weight average instead of the online model.
  """
  experiment = experiment_lib.create(config, info=info, validate=False)
  if variables_dir:
    variables = convert.load_variables(variables_dir)
    return experiment.forward, variables['params'], variables['batch_stats'], None
  which, epoch = (checkpoint, None) if checkpoint in ('best', 'last') else ('last', int(checkpoint))
  checkpoints = Checkpoints(workdir, keep=experiment.config.checkpoint.keep, read_only=True)
  state, meta = checkpoints.restore(experiment.init_state(), which=which, epoch=epoch)  # Restored replicated.
  if ema:
    if state.ema is None:
      raise ValueError('--ema: this run has no weight average (train with --config.ema.enabled=True)')
    state = steps.averaged(state)
  return experiment.forward, state.params, state.batch_stats, int(meta['epoch'])
