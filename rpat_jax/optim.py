"""The optimiser and learning-rate schedules of the official code, as optax objects.

PyTorch SGD with coupled weight decay and momentum, p -= lr * (m * buf + g + wd * p), is
`add_decayed_weights(wd)` followed by `sgd(lr, momentum)`; like the official code it decays every
parameter, BatchNorm scales and biases included.
"""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Maps the optimiser's update count (0 for the first update) to a learning rate.

  - 'multistep' (RPAT_Benchmarks, MultiStepLR stepped once per epoch): lr * factor^k in 0-indexed epoch
    e, where k is the number of milestones <= e. Milestones (100, 105): epochs 0-99 use 0.1, 100-104 0.01.
  - 'rebat_piecewise' (RPAT_SOTAs / ReBAT, set per iteration from t = e + (i+1)/n): lr for t < stage1,
    lr / lr_factor for t < stage2, lr / lr_factor^2 after.
  - 'constant'.
  """
  base = config.optimizer.lr
  schedule = config.schedule
  if schedule.name == 'constant':
    return optax.constant_schedule(base)
  if schedule.name == 'multistep':
    milestones = np.asarray(sorted(schedule.milestones), np.int32)  # numpy: safe to build under a trace.

    def multistep(count):
      epoch = count // steps_per_epoch
      return base * schedule.factor ** jnp.sum(epoch >= milestones)
    return multistep
  if schedule.name == 'rebat_piecewise':

    def piecewise(count):
      t = (count + 1) / steps_per_epoch
      return jnp.where(t < schedule.stage1, base,
                       jnp.where(t < schedule.stage2, base / schedule.lr_factor,
                                 base / schedule.lr_factor ** 2))
    return piecewise
  raise ValueError(f'schedule.name={schedule.name!r}; allowed: multistep, rebat_piecewise, constant')


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  return optax.chain(
      optax.add_decayed_weights(config.optimizer.weight_decay),
      optax.sgd(learning_rate_schedule(config, steps_per_epoch), momentum=config.optimizer.momentum,
                nesterov=config.optimizer.nesterov),
  )
