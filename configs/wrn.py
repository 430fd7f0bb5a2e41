"""WideResNet-34-10 on CIFAR-10, PGD-AT + RPAT, Linf 8/255.

  python -m rpat_jax.main --config=configs/wrn.py --workdir=runs/wrn34_rpat

Depth and width are keys: `--config.model.depth=28` gives the WRN-28-10 of the official
RPAT_Benchmarks code. The number of classes comes from the dataset.
"""

from rpat_jax import defaults


def get_config(arg=None):
  config = defaults.get_config()
  config.model.name = 'wide_resnet'
  config.model.depth = 34
  config.model.widen_factor = 10
  return defaults.apply_words(config, arg)
