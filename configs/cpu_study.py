"""The CPU study of docs/results.md: a small CNN on the JPEG copy of CIFAR-10, sized for a 2-core CPU.

  python -m rpat_jax.main --config=configs/cpu_study.py:pgd_at,rpat --workdir=runs/study/rpat_s0 \
      --config.data.data_dir=$TFDS_DIR --config.seed=0

The small CNN (width 16, 24,346 parameters) is the only model of the package that trains several runs on
the full 50,000-image training split within two hours on 2 CPU cores: PreActResNet-18 runs at about
4 images/s there (docs/benchmarks.md), 3.5 hours per epoch of adversarial training. The training attack
is PGD-5 (eps 8/255, step 2/255: five steps reach the box's corners) instead of the official PGD-10, to
halve the step; 5 epochs, lr 0.1 for four and 0.01 for the last; everything else is the official default
(lam 1.0, rate 0.5, SGD momentum 0.9, weight decay 5e-4, batch 128). Test clean and PGD-10 accuracy on
the first 1,000 test images after each epoch. Words as for every config: standard, noise, pgd_at, rpat,
no_rpat, ...

About 14-19 minutes per PGD-AT run and 18-26 with RPAT on 2 CPU cores (250-350 images/s); 4-6 for
standard or noise; five seeds in one run (--config.seeds=5) about 80-90 minutes per arm. Expected after
epoch 5 (docs/results.md, seeds 0-4): clean 38.4-39.6% and AutoAttack 17.0-18.8% on the first 1,000
test images for PGD-AT with or without RPAT; about 57% clean for standard and noise.
"""

from rpat_jax.config import defaults


def get_config(arg=None):
  config = defaults.get_config()
  config.model.name = 'small_cnn'
  config.model.width = 16
  config.data.name = 'cifar10_jpeg'
  config.epochs = 5
  config.schedule.milestones = (4,)
  config.attack.steps = 5
  config.eval.num_examples = 1000
  config.eval.pgd_steps = 10
  return defaults.apply_words(config, arg)
