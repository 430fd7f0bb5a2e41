"""PreActResNet-18 on CIFAR-10, PGD-AT + RPAT, Linf 8/255 (the official Benchmarks recipe).

  python -m rpat_jax.main --config=configs/prn18.py --workdir=runs/prn18_rpat
  python -m rpat_jax.main --config=configs/prn18.py:smoke --workdir=/tmp/prn18_smoke   # CPU check
  python -m rpat_jax.main --config=configs/prn18.py:cifar10,rpat_plus_plus,linf --workdir=runs/prn18_rpatpp

The model is the standard CIFAR PreActResNet-18 (11.17M parameters, the RPAT_SOTAs/ReBAT definition);
the recipe (110 epochs, lr 0.1 x0.1 at 100 and 105, PGD-10 in BN eval mode, lambda 1.0, r 0.5) is
RPAT_Benchmarks'. Offline: `--config.data.name=cifar10_jpeg --config.data.data_dir=DIR` (a prepared TFDS
data_dir).

Cost: on a GPU or TPU, not measured yet (docs/benchmarks.md has the runbook). On 2 CPU cores the step
runs at about 4.4 images/s, about 3.5 hours an epoch: a CPU is for the `:smoke` check only.
Should reach: the paper's number for this row (PGD-AT + RPAT, Benchmarks table) is not available to us;
for `:rpat_plus_plus` the paper reports 82.63% clean / 51.00% AutoAttack on CIFAR-10 (56.84 / 27.68 on
CIFAR-100; L2: 89.06 / 71.26), and ReBAT (`:rebat`) 82.09 / 50.72.
"""

from rpat_jax.config import defaults


def get_config(arg=None):
  config = defaults.get_config()
  config.model.name = 'preact_resnet18'
  return defaults.apply_words(config, arg)
