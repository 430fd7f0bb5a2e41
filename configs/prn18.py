"""PreActResNet-18 on CIFAR-10, PGD-AT + RPAT, Linf 8/255 (the official Benchmarks recipe).

  python -m rpat_jax.main --config=configs/prn18.py --workdir=runs/prn18_rpat
  python -m rpat_jax.main --config=configs/prn18.py:smoke --workdir=/tmp/prn18_smoke   # CPU check

The model is the standard CIFAR PreActResNet-18 (11.17M parameters, the RPAT_SOTAs/ReBAT definition);
the recipe (110 epochs, lr 0.1 x0.1 at 100 and 105, PGD-10 in BN eval mode, lambda 1.0, r 0.5) is
RPAT_Benchmarks'. Offline: `--config.data.name=cifar10_jpeg --config.data.data_dir=DIR` (a prepared TFDS data_dir).
"""

from rpat_jax import defaults


def get_config(arg=None):
  config = defaults.get_config()
  config.model.name = 'preact_resnet18'
  return defaults.apply_words(config, arg)
