"""Shared test helpers: a tiny, fast version of the smoke config."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `configs` is imported as a package from the repository root.
  sys.path.insert(0, ROOT)

from configs import smoke  # noqa: E402
from rpat_jax import threats  # noqa: E402


def tiny_config(**overrides):
  """A small CNN (width 8) on 16x16 synthetic images: 4 steps of 64 per epoch, PGD-2."""
  config = smoke.get_config()
  config.model.width = 8
  config.data.synthetic.num_train = 256
  config.data.synthetic.num_test = 64
  config.data.synthetic.image_size = 16
  config.batch_size = 64
  config.epochs = 2
  config.attack.steps = 2
  config.eval.batch_size = 32
  config.eval.pgd_steps = 2
  config.log.progress = 'none'
  config = threats.resolve(config)
  config.update_from_flattened_dict(overrides)
  return config
