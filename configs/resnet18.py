"""ResNet-18 on CIFAR-10, PGD-AT + RPAT, Linf 8/255.

  python -m rpat_jax.main --config=configs/resnet18.py --workdir=runs/resnet18_rpat

"ResNet-18" here is the official RPAT_Benchmarks network, which is built from Bottleneck blocks
[2,2,2,2] with a 2048-d feature (13.96M parameters), `resnet18_bottleneck`. The standard BasicBlock
ResNet-18 (11.17M) is `--config.model.name=resnet18`.
"""

from rpat_jax import defaults


def get_config(arg=None):
  config = defaults.get_config()
  config.model.name = 'resnet18_bottleneck'
  return defaults.apply_words(config, arg)
