"""The model variables an evaluation attacks: a training checkpoint (optionally its weight average) or
variables converted from PyTorch (`rpat_jax.convert --to`)."""

import jax

from rpat_jax import optim
from rpat_jax import parallel
from rpat_jax import steps
from rpat_jax.checkpointing import Checkpoints
from rpat_jax.forward import Forward


def restore_variables(config, workdir: str, checkpoint: str, num_classes: int, image_shape, variables_dir=None,
                      ema: bool = False):
  """(forward, params, batch_stats, epoch) of a training checkpoint, or of converted variables (epoch None)."""
  forward = Forward.from_config(config.model, num_classes)
  if variables_dir:
    from rpat_jax import convert  # pylint: disable=g-import-not-at-top (defines the converter's flags)
    variables = convert.load_variables(variables_dir)
    return forward, variables['params'], variables['batch_stats'], None
  tx = optim.make_optimizer(config, steps_per_epoch=1)
  target = jax.jit(lambda: steps.create_train_state(config, forward, tx, image_shape),
                   out_shardings=parallel.replicated(parallel.make_mesh()))()  # Restored replicated.
  which, epoch = (checkpoint, None) if checkpoint in ('best', 'last') else ('last', int(checkpoint))
  state, meta = Checkpoints(workdir, keep=config.checkpoint.keep).restore(target, which=which, epoch=epoch)
  if ema:
    if state.ema is None:
      raise ValueError('--ema: this run has no weight average (train with --config.ema.enabled=True)')
    state = steps.averaged(state)
  return forward, state.params, state.batch_stats, int(meta['epoch'])
