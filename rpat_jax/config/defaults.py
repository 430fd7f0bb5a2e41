"""Shared defaults for every rpat_jax run (PGD-AT + RPAT, Linf 8/255, on CIFAR-10) and the config words.

Every key lives here, in the package, so a config file anywhere (`configs/*.py`, or a user's own) starts
from `rpat_jax.config.defaults.get_config()` and changes only what differs. The recipe is the official
RPAT_Benchmarks one ([B], FlaAI/RPAT; docs/fidelity.md): SGD lr 0.1, momentum 0.9, coupled weight
decay 5e-4 on all parameters, batch 128, 110 epochs with the learning rate x0.1 at epochs 100 and 105,
PGD-10 training attack with BatchNorm in eval mode, zero-padded random crop + flip, no input
normalisation, lambda = 1.0 in the code's MSE scale at interpolation rate 0.5. Per-model files
(`configs/prn18.py`, `resnet18.py`, `wrn.py`, `smoke.py`) start from this. Every key can be overridden:
`--config.rpat.lam=0.5`.
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()
  # The adversarial-training method (rpat_jax/methods.py): pgd_at, trades, mart, consistency, rebat,
  # rpat_plus_plus, or any registered one; RPAT adds to the first four.
  config.method = 'pgd_at'
  config.beta = 6.0  # TRADES / MART weight of the KL term ([B] --beta, shared by both as there).
  # Consistency-AT (Tack et al.): JS between two augmented views' adversarial predictions at temperature
  # T. [B] weights it with the same --lam as RPAT: lam None does that; a number separates the two.
  config.consistency = ml_collections.ConfigDict()
  config.consistency.temperature = 0.5
  config.consistency.lam = config_dict.placeholder(float)
  config.epochs = 110
  config.batch_size = 128  # Global batch over all devices.
  config.seed = 0
  # K seeds (seed, ..., seed + K - 1) trained together in one compiled program, the train state with a
  # leading seed axis (rpat_jax/seeds.py). 1: a single run.
  config.seeds = 1
  # K > 1 over several devices. 'batch': each seed's batch split over the devices (data parallel, as one
  # seed). 'seeds': whole seeds per device (K a multiple of the device count; no gradient all-reduce).
  # 'auto': 'seeds' where K is a multiple of the device count, else 'batch'.
  config.seed_sharding = 'auto'
  # How the one program computes the K seeds. 'vmap': vectorised, every op once for all seeds (wide ops for
  # an accelerator). 'unroll': the single run's step once per seed (compile time grows with K). Either way a
  # seed equals its single run to float rounding, not bit for bit (docs/training.md). 'auto': 'unroll' on a
  # CPU (the faster there), 'vmap' elsewhere.
  config.seed_compute = 'auto'

  config.model = ml_collections.ConfigDict()
  config.model.name = 'preact_resnet18'
  config.model.dtype = 'float32'  # Compute dtype; 'bfloat16' keeps float32 params.
  config.model.width = 32  # small_cnn only: base channel count.
  config.model.depth = 34  # wide_resnet only.
  config.model.widen_factor = 10  # wide_resnet only.
  # resnet18_bottleneck, wide_resnet: 1 for 32x32, 2 for 64x64 inputs ([B]); preact_resnet18_benchmarks is
  # always 2, as [B]'s pre_resnet18.
  config.model.stem_stride = 1
  # BatchNorm's batch variance: True, one pass E[x^2] - E[x]^2 (Flax's default; 10% faster on a CPU);
  # False, two passes mean((x - mean)^2) as PyTorch (exact when a channel's mean dwarfs its spread).
  config.model.bn_fast_variance = True
  # Input normalisation inside the forward pass. The official RPAT_Benchmarks code has none (False);
  # its RPAT_SOTAs part normalises with CIFAR-10 statistics.
  config.model.normalize = False
  config.model.mean = (0.4914, 0.4822, 0.4465)
  config.model.std = (0.2471, 0.2435, 0.2616)

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cifar10'  # 'synthetic' or any TFDS image-classification dataset.
  config.data.data_dir = config_dict.placeholder(str)  # TFDS data_dir; None = TFDS default.
  config.data.cache_dir = ''  # Decoded-array cache; '' = $XDG_CACHE_HOME/rpat_jax or ~/.cache/rpat_jax.
  config.data.train_split = 'train'
  config.data.test_split = 'test'
  config.data.padding = 4  # Random-crop padding in pixels.
  config.data.pad_mode = 'constant'  # 'constant' (zeros, official Benchmarks) or 'reflect' (ReBAT).
  config.data.flip = True
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.num_train = 4096
  config.data.synthetic.num_test = 512
  config.data.synthetic.image_size = 32
  config.data.synthetic.num_classes = 10
  config.data.synthetic.seed = 0

  config.attack = ml_collections.ConfigDict()
  config.attack.norm = 'linf'  # 'linf' or 'l2'.
  # None = the threat model's default from rpat_jax/config/threats.py (Linf 8/255, 2/255; L2 128/255, 15/255),
  # so `--config.attack.norm=l2` alone gives the official L2 setting.
  config.attack.eps = config_dict.placeholder(float)
  config.attack.step_size = config_dict.placeholder(float)
  config.attack.steps = 10
  config.attack.random_start = True
  # BatchNorm mode while the training attack runs: 'eval' (running statistics, as RPAT_Benchmarks)
  # or 'train' (batch statistics of the attacked batch, running statistics untouched).
  config.attack.bn_mode = 'eval'
  # True: the attack's steps are written out in the compiled step; False: one loop body run `steps`
  # times (a shorter program). Same computation: bit-identical on the small CNN, float rounding apart on
  # PreActResNet-18, where the unrolled step ran faster on a CPU at the same compile time
  # (docs/benchmarks.md). The benchmark counts FLOPs on this form (XLA counts a loop body once).
  config.attack.unroll = True

  config.rpat = ml_collections.ConfigDict()
  config.rpat.enabled = True
  config.rpat.lam = 1.0  # Weight of the regulariser, in the scale of `rpat.form`.
  # Interpolation rates r: x~ = r*x + (1-r)*x' (r weights the clean image, as the official code).
  config.rpat.rates = (0.5,)
  # 'code': MSE(z(x~), r z(x) + (1-r) z(x')), the official code's form and scale (default).
  # 'paper': the seed formula MSE((z~ - z)/a, (z' - z~)/(1-a)) with a = 1-r; equals 'code' x 1/(a(1-a))^2.
  config.rpat.form = 'code'
  # 0-indexed epoch from which RPAT is on; before it the step is the method's own (no x~ or extra clean
  # forward). Official --RA_start counts epochs from 1: start_epoch = RA_start - 1 (RA_start 0 or 1 = 0).
  config.rpat.start_epoch = 0
  config.rpat.detach_target = False  # Official: gradients flow through z(x), z(x') and z(x~).

  # How a step runs its method's train-mode forwards (every method, with or without RPAT).
  config.passes = ml_collections.ConfigDict()
  # False (official): separate train-mode forwards in the method's order (PGD-AT + RPAT: z(x') -> z(x~) ->
  # z(x)), each with its own batch statistics. True: one forward over the concatenated batch (faster,
  # shared BN statistics; methods that allow it).
  config.passes.fused = False
  # True: the forwards run as one vmapped pass over the stacked inputs (a wider batch for the hardware),
  # each input keeping its own batch statistics and the running statistics composed as the official
  # sequence of calls: the official semantics, float rounding apart.
  config.passes.batched = False

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 5e-4  # Coupled (added to the gradient), on all parameters.

  config.schedule = ml_collections.ConfigDict()
  # 'multistep': lr x factor at each milestone epoch, per epoch (RPAT_Benchmarks MultiStepLR).
  # 'rebat_piecewise': lr / lr_factor at stage1 and stage2, set per iteration (RPAT_SOTAs / ReBAT).
  # 'constant'.
  config.schedule.name = 'multistep'
  config.schedule.milestones = (100, 105)
  config.schedule.factor = 0.1
  config.schedule.stage1 = 100
  config.schedule.stage2 = 150
  config.schedule.lr_factor = 1.5

  config.eval = ml_collections.ConfigDict()
  config.eval.every_epochs = 1
  config.eval.num_examples = 10000  # First N test images; 0 = the whole test split.
  config.eval.batch_size = 512  # A multiple of any power-of-two device count up to 512 (GPU hosts, TPU slices).
  config.eval.pgd_steps = 10  # PGD-k with the training threat's eps and step size.

  # Weight averaging (any method): an EMA of params and BN statistics, checkpointed and evaluated beside
  # the online model. [S] (ReBAT / RPAT++): decay 0.999 per step, a plain copy before epoch 105.
  config.ema = ml_collections.ConfigDict()
  config.ema.enabled = False
  config.ema.decay = 0.999
  config.ema.start_epoch = 0  # 0-indexed epoch from which the average starts; before it, a copy.

  # ReBAT / RPAT++ ([S]): CE on x' plus beta * a KL against the weight average (the teacher) from
  # ema.start_epoch on; `rate` is RPAT++'s interpolation weight on the perturbation (0.5 in [S]).
  config.rebat = ml_collections.ConfigDict()
  config.rebat.beta = 1.0
  config.rebat.rate = 0.5
  # The teacher's BatchNorm: 'eval' (running statistics, always; ours) or 'official' ([S]'s accident: batch
  # statistics during the average's first epoch ema.start_epoch, which also move its running statistics).
  config.rebat.teacher_bn = 'eval'

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep = 3  # The last N epochs are kept; the best by test PGD accuracy separately.
  # Also checkpoint the exact step every N minutes inside an epoch (0 = only at epoch ends and on
  # SIGTERM/SIGINT): a run killed without warning loses at most this much.
  config.checkpoint.every_minutes = 30.0

  config.log = ml_collections.ConfigDict()
  config.log.progress = 'auto'  # 'auto' (a bar on a terminal, lines otherwise), 'bar', 'lines', 'none'.
  config.log.every_steps = 50  # Progress update cadence.
  return config


# Keys that moved, old name -> new name: a config or command line that sets an old one is refused in one
# line naming the new one, and a run's recorded config.json with old names is read with the new ones.
MOVED_KEYS = {
    'rpat.fused_forward': 'passes.fused',
    'rpat.batched_forwards': 'passes.batched',
}
# Top-level keys added after runs were recorded, with the value those runs had.
ADDED_KEYS = {'seeds': 1, 'seed_sharding': 'auto', 'seed_compute': 'auto'}


def moved_key_message(key: str) -> str:
  """'<key> is now <new key>' for a key of MOVED_KEYS."""
  return f'the key {key!r} is now {MOVED_KEYS[key]!r}'


def moved_keys_in(tree) -> list:
  """The keys of MOVED_KEYS that a nested config (a ConfigDict or its JSON dict) still holds."""
  found = []
  for old in MOVED_KEYS:
    group, leaf = old.split('.')
    if leaf in tree.get(group, {}):
      found.append(old)
  return found


def upgrade_recorded(recorded: dict) -> dict:
  """A recorded config (nested JSON) with every key of MOVED_KEYS under its new name."""
  for old in moved_keys_in(recorded):
    (old_group, old_leaf), (new_group, new_leaf) = old.split('.'), MOVED_KEYS[old].split('.')
    recorded.setdefault(new_group, {})[new_leaf] = recorded[old_group].pop(old_leaf)
  for key, value in ADDED_KEYS.items():  # Recorded before the key existed: the value every run had then.
    recorded.setdefault(key, value)
  return recorded


def _smoke(config):
  config.data.name = 'synthetic'
  config.data.synthetic.num_train = 512
  config.data.synthetic.num_test = 256
  config.epochs = 1
  config.attack.steps = 2
  config.eval.num_examples = 256
  config.eval.batch_size = 128
  config.eval.pgd_steps = 2
  config.schedule.name = 'constant'


def _setter(path, value):
  return lambda config: config.update_from_flattened_dict({path: value})


def _tiny_imagenet(config):
  """Tiny-ImageNet with [B]'s 64x64 models: stride-2 stems, and [B]'s own PreActResNet-18 (BN stem)."""
  config.data.name = 'tiny_imagenet'
  config.model.stem_stride = 2  # [B]'s ResNet-18 and WRN on 64x64 inputs.
  if config.model.name == 'preact_resnet18':
    config.model.name = 'preact_resnet18_benchmarks'  # [B]'s `pre_resnet18`: the paper's Tiny rows.


def _sotas_recipe(config, method):
  """[S]'s recipe (ReBAT's train_cifar_wa.py): 200 epochs, lr / 1.5 at 100 and 150 per iteration,
  reflect padding, CIFAR-10 normalisation, attack with batch statistics, weight average from epoch 105."""
  config.method = method
  config.rpat.enabled = False  # RPAT++ is its own term, not the Benchmarks regulariser on top.
  config.epochs = 200
  config.schedule.name = 'rebat_piecewise'
  config.data.pad_mode = 'reflect'
  config.model.normalize = True
  config.attack.bn_mode = 'train'
  config.ema.enabled = True
  config.ema.decay = 0.999
  config.ema.start_epoch = 105


def _reference_training(config, method):
  """The motivating figure's references (`standard`: clean images; `noise`: uniform noise in the eps-box):
  no attack, so no RPAT either."""
  config.method = method
  config.rpat.enabled = False


# One word per table column: dataset, method, RPAT on/off, threat, and `smoke`.
CONFIG_WORDS = {
    'smoke': _smoke,
    'cifar10': _setter('data.name', 'cifar10'),
    'cifar100': _setter('data.name', 'cifar100'),
    'tiny_imagenet': _tiny_imagenet,
    'standard': lambda config: _reference_training(config, 'standard'),
    'noise': lambda config: _reference_training(config, 'noise'),
    'pgd_at': _setter('method', 'pgd_at'),
    'trades': _setter('method', 'trades'),
    'mart': _setter('method', 'mart'),
    'consistency': _setter('method', 'consistency'),
    'rebat': lambda config: _sotas_recipe(config, 'rebat'),
    'rpat_plus_plus': lambda config: _sotas_recipe(config, 'rpat_plus_plus'),
    'rpat': _setter('rpat.enabled', True),
    'no_rpat': _setter('rpat.enabled', False),
    'linf': _setter('attack.norm', 'linf'),
    'l2': _setter('attack.norm', 'l2'),  # eps / step_size come from the norm (rpat_jax/config/threats.py).
}


def apply_words(config, arg):
  """Applies a config string (`--config=configs/prn18.py:cifar100,trades,rpat,l2`), left to right.

  Words: smoke (a CPU-sized check of the same model: synthetic data, 1 epoch, PGD-2), cifar10, cifar100,
  tiny_imagenet (also the stride-2 stem of [B]'s models for 64x64), standard and noise (the motivating
  figure's reference trainings, RPAT off), pgd_at, trades, mart, consistency,
  rebat, rpat_plus_plus (each with [S]'s whole recipe), rpat, no_rpat, linf, l2. An unknown word raises a
  ValueError naming the allowed ones.
  """
  if not arg:
    return config
  for word in arg.split(','):
    if word not in CONFIG_WORDS:
      raise ValueError(f'config argument {word!r} is unknown; allowed: {", ".join(CONFIG_WORDS)}')
    CONFIG_WORDS[word](config)
  return config
