"""ResNet-18 on CIFAR-10, PGD-AT + RPAT, Linf 8/255.

  python -m rpat_jax.main --config=configs/resnet18.py --workdir=runs/resnet18_rpat
  python -m rpat_jax.main --config=configs/resnet18.py:tiny_imagenet,trades,rpat,linf --workdir=runs/r18_tiny

"ResNet-18" here is the official RPAT_Benchmarks network, which is built from Bottleneck blocks
[2,2,2,2] with a 2048-d feature (13.96M parameters), `resnet18_bottleneck`. The standard BasicBlock
ResNet-18 (11.17M) is `--config.model.name=resnet18`.

Cost: on a GPU or TPU, not measured yet (docs/benchmarks.md has the runbook); a CPU is for the `:smoke`
check only.
Should reach: the paper's Benchmarks table (ResNet-18, each method with and without RPAT) is not
available to us, so there is no published number to hold this config to yet.
"""

from rpat_jax.config import defaults


def get_config(arg=None):
  config = defaults.get_config()
  config.model.name = 'resnet18_bottleneck'
  return defaults.apply_words(config, arg)
