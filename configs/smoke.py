"""A small CNN with PGD-AT + RPAT on the built-in synthetic dataset: no download, CPU-friendly.

  python -m rpat_jax.main --config=configs/smoke.py --workdir=/tmp/rpat_smoke

Trains a width-16 CNN for 3 epochs of 20 steps (batch 128, PGD-5 training attack, lr 0.1 then 0.01 in
the last epoch) and evaluates clean and PGD-10 accuracy on 512 test images after each epoch; about 45 s
on 2 CPU cores. Expect clean accuracy well above the 10% of chance and a clearly non-zero PGD accuracy
after the last epoch.
"""

from rpat_jax.config import defaults


def get_config(arg=None):
  config = defaults.get_config()
  config.model.name = 'small_cnn'
  config.model.width = 16
  config.data.name = 'synthetic'
  config.data.synthetic.num_train = 2560
  config.epochs = 3
  config.attack.steps = 5
  config.eval.num_examples = 0
  config.eval.batch_size = 256
  config.schedule.milestones = (2,)  # lr 0.1, then 0.01 for the last epoch.
  config.log.every_steps = 8
  return defaults.apply_words(config, arg)
