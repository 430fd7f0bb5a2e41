"""The defaults themselves as a config file: PGD-AT + RPAT on CIFAR-10 with PreActResNet-18.

  python -m rpat_jax.main --config=configs/default.py --workdir=runs/default

Every key and its default live in `rpat_jax/config/defaults.py`, inside the package, so that config files
(these, or your own anywhere) work from any directory: start from `defaults.get_config()`, change what
differs, and end with `defaults.apply_words(config, arg)` to accept the config words.
"""

from rpat_jax.config import defaults


def get_config(arg=None):
  return defaults.apply_words(defaults.get_config(), arg)
