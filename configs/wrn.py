"""WideResNet-34-10 on CIFAR-10, PGD-AT + RPAT, Linf 8/255.

  python -m rpat_jax.main --config=configs/wrn.py --workdir=runs/wrn34_rpat
  python -m rpat_jax.main --config=configs/wrn.py:cifar10,rpat_plus_plus,linf --workdir=runs/wrn34_rpatpp

Depth and width are keys: `--config.model.depth=28` gives the WRN-28-10 of the official
RPAT_Benchmarks code. The number of classes comes from the dataset (46.16M parameters for 10).

Cost: on a GPU or TPU, not measured yet (docs/benchmarks.md has the runbook); a CPU is for the `:smoke`
check only.
Should reach: for `:rpat_plus_plus` the paper reports 86.76% clean / 54.97% AutoAttack on CIFAR-10
(ReBAT, `:rebat`: 85.25 / 54.78); its PGD-AT + RPAT row (Benchmarks table) is not available to us.
"""

from rpat_jax.config import defaults


def get_config(arg=None):
  config = defaults.get_config()
  config.model.name = 'wide_resnet'
  config.model.depth = 34
  config.model.widen_factor = 10
  return defaults.apply_words(config, arg)
