"""A small CNN with PGD-AT + RPAT on the built-in synthetic dataset: no download, CPU-friendly.

  python -m rpat_jax.main --config=configs/smoke.py --workdir=/tmp/rpat_smoke

Trains 3 epochs of 32 steps (batch 128, PGD-5 training attack) and evaluates clean and PGD-10 accuracy
on 512 test images after each epoch; about a minute on 2 CPU cores. Expect clean accuracy well above
the 10% of chance and a non-zero PGD accuracy after the last epoch.
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.model.name = 'small_cnn'
  config.data.name = 'synthetic'
  config.epochs = 3
  config.attack.steps = 5
  config.eval.num_examples = 0
  config.eval.batch_size = 256
  config.schedule.name = 'constant'
  config.optimizer.lr = 0.05
  config.log.every_steps = 8
  return default.apply_arg(config, arg)
