"""Checks a resolved config before anything is built or compiled.

Each problem becomes one `ConfigError` line that names the key and what is allowed; `main` prints it and
exits with status 2.
"""

import math

from typing import Optional

import ml_collections

from rpat_jax import data
from rpat_jax import methods
from rpat_jax import models
from rpat_jax import seeds
from rpat_jax.config import defaults
from rpat_jax.config import threats
from rpat_jax.config.errors import ConfigError, choice, require  # noqa: F401 (ConfigError re-exported)

BN_MODES = ('eval', 'train')
RPAT_FORMS = ('code', 'paper')
SCHEDULES = ('multistep', 'rebat_piecewise', 'constant')
PAD_MODES = ('constant', 'reflect')
PROGRESS = ('auto', 'bar', 'lines', 'none')
# An eps at or above these is almost surely in 0-255 pixel units (8 instead of 8/255).
PIXEL_UNIT_LIMITS = {'linf': 1.0, 'l2': 16.0}


def _positive(key: str, value, kind=float):
  require(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
          and math.isfinite(value) and (kind is float or float(value).is_integer()),
          f'{key}={value!r} must be a positive {"number" if kind is float else "integer"}')


def _non_negative(key: str, value):
  require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and math.isfinite(value),
          f'{key}={value!r} must be a number >= 0')


def _fraction(key: str, value):
  require(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1,
          f'{key}={value!r}; allowed: a number in [0, 1)')


def _budget(key: str, value, norm: str):
  _positive(key, value)
  limit = PIXEL_UNIT_LIMITS[norm]
  require(value < limit,
          f'{key}={value!r} looks like 0-255 pixel units; give a fraction of the [0, 1] pixel range, '
          f'e.g. {value:g}/255 = {value / 255:.6f}')


def validate(config: ml_collections.ConfigDict, device_count: Optional[int], *, data_on_disk: bool = True) -> None:
  """Raises ConfigError for the first problem in a config resolved by `threats.resolve`.

  device_count: the global device count the batches are split over; None skips those checks (the CLI
  validates once before it joins the other processes, and again after).
  data_on_disk: check that a TFDS dataset is prepared (False where its published sizes are enough: `aot`).
  """
  for old in defaults.moved_keys_in(config):  # Set by a config file written for an older layout.
    require(False, defaults.moved_key_message(old))
  choice('method', config.method, methods.names())
  method = methods.get(config.method)
  require(isinstance(config.beta, (int, float)) and config.beta >= 0,
          f'beta={config.beta!r} must be a number >= 0 (the TRADES / MART weight)')
  _positive('epochs', config.epochs, int)
  _positive('batch_size', config.batch_size, int)
  require(isinstance(config.seed, int), f'seed={config.seed!r} must be an integer')
  _positive('seeds', config.seeds, int)
  choice('seed_sharding', config.seed_sharding, ('auto', 'batch', 'seeds'))
  choice('seed_compute', config.seed_compute, ('auto', 'vmap', 'unroll'))
  whole_seeds = device_count is not None and seeds.layout(config, device_count) == 'seeds'
  require(device_count is None or whole_seeds or config.batch_size % device_count == 0,
          f'batch_size={config.batch_size} ({"per seed, " if config.seeds > 1 else ""}global) is not '
          f'divisible by the {device_count} devices of all processes; allowed: a multiple of {device_count}')
  if config.seeds > 1 and config.seed_sharding == 'seeds':
    require(device_count is None or config.seeds % device_count == 0,
            f'seeds={config.seeds} with seed_sharding=seeds is not a multiple of the {device_count} devices of '
            f'all processes; allowed: a multiple of {device_count}, or seed_sharding=batch')

  choice('model.name', config.model.name, models.MODEL_NAMES)
  choice('model.dtype', config.model.dtype, tuple(models.DTYPES))

  # CIFAR-10/100 are prepared on first use (rpat_jax.data.prepare.ensure_prepared), after these checks.
  if data_on_disk and config.data.name != 'synthetic' and config.data.name not in data.PREPARED_ON_FIRST_USE:
    require(data.dataset_available(config.data.name, config.data.data_dir),
             f'data.name={config.data.name!r} is not prepared in data.data_dir={config.data.data_dir!r}; '
             f'allowed: synthetic, or a TFDS dataset prepared there: '
             f'{data.how_to_prepare(config.data.name, config.data.data_dir)}')
  if config.data.name == 'synthetic':
    _positive('data.synthetic.num_train', config.data.synthetic.num_train, int)
    _positive('data.synthetic.num_test', config.data.synthetic.num_test, int)
    _positive('data.synthetic.image_size', config.data.synthetic.image_size, int)
    require(isinstance(config.data.synthetic.num_classes, int) and config.data.synthetic.num_classes >= 2,
            f'data.synthetic.num_classes={config.data.synthetic.num_classes!r} must be an integer >= 2')
  choice('data.pad_mode', config.data.pad_mode, PAD_MODES)
  require(isinstance(config.data.padding, int) and config.data.padding >= 0,
          f'data.padding={config.data.padding!r} must be an integer >= 0')

  choice('attack.norm', config.attack.norm, threats.NORMS)
  _budget('attack.eps', config.attack.eps, config.attack.norm)
  _budget('attack.step_size', config.attack.step_size, config.attack.norm)
  _positive('attack.steps', config.attack.steps, int)
  choice('attack.bn_mode', config.attack.bn_mode, BN_MODES)
  require(isinstance(config.attack.unroll, bool), f'attack.unroll={config.attack.unroll!r}; allowed: True, False')

  rates = tuple(config.rpat.rates) if isinstance(config.rpat.rates, (tuple, list)) else (config.rpat.rates,)
  require(len(rates) > 0, 'rpat.rates is empty; allowed: one or more rates in (0, 1)')
  for rate in rates:
    require(isinstance(rate, (int, float)) and 0 < rate < 1,
             f'rpat.rates contains {rate!r}; allowed: rates strictly between 0 and 1')
  require(isinstance(config.rpat.lam, (int, float)) and config.rpat.lam >= 0,
          f'rpat.lam={config.rpat.lam!r} must be a number >= 0')
  choice('rpat.form', config.rpat.form, RPAT_FORMS)
  fused = [name for name in methods.names() if methods.get(name).allows_fused_forward]
  require(isinstance(config.passes.fused, bool), f'passes.fused={config.passes.fused!r}; allowed: True, False')
  require(not config.passes.fused or method.allows_fused_forward,
          f'passes.fused=True with method={config.method!r}; allowed: only with {", ".join(fused)}')
  require(isinstance(config.passes.batched, bool),
          f'passes.batched={config.passes.batched!r}; allowed: True, False')
  require(not (config.passes.batched and config.passes.fused),
          'passes.batched=True with passes.fused=True; allowed: at most one of them')
  require(isinstance(config.rpat.start_epoch, int) and config.rpat.start_epoch >= 0,
          f'rpat.start_epoch={config.rpat.start_epoch!r} must be an integer >= 0 (0-indexed epoch)')
  require(not config.rpat.enabled or method.rpat_passes is not None,
          f'rpat.enabled=True with method={config.method}, which has no RPAT variant; allowed: False'
          + (' (RPAT++ is method=rpat_plus_plus)' if method.teacher is not None else ''))
  if method.validate is not None:
    method.validate(config)
  _positive('consistency.temperature', config.consistency.temperature)
  require(config.consistency.lam is None or (isinstance(config.consistency.lam, (int, float))
                                              and config.consistency.lam >= 0),
          f'consistency.lam={config.consistency.lam!r}; allowed: None (= rpat.lam) or a number >= 0')

  _positive('optimizer.lr', config.optimizer.lr)
  _fraction('optimizer.momentum', config.optimizer.momentum)
  require(isinstance(config.optimizer.nesterov, bool), f'optimizer.nesterov={config.optimizer.nesterov!r}; allowed: '
          'True, False')
  _non_negative('optimizer.weight_decay', config.optimizer.weight_decay)
  choice('schedule.name', config.schedule.name, SCHEDULES)
  if config.schedule.name == 'multistep':
    milestones = config.schedule.milestones
    require(isinstance(milestones, (tuple, list)) and all(isinstance(m, int) and m > 0 for m in milestones)
            and list(milestones) == sorted(set(milestones)),
            f'schedule.milestones={milestones!r}; allowed: increasing positive epoch numbers, e.g. (100, 105)')
    _positive('schedule.factor', config.schedule.factor)
  if config.schedule.name == 'rebat_piecewise':
    _positive('schedule.stage1', config.schedule.stage1, int)
    _positive('schedule.stage2', config.schedule.stage2, int)
    require(config.schedule.stage1 <= config.schedule.stage2,
            f'schedule.stage1={config.schedule.stage1} is after schedule.stage2={config.schedule.stage2}')
    _positive('schedule.lr_factor', config.schedule.lr_factor)
  _positive('eval.batch_size', config.eval.batch_size, int)
  require(device_count is None or config.eval.batch_size % device_count == 0,
          f'eval.batch_size={config.eval.batch_size} (global) is not divisible by the {device_count} devices '
          f'of all processes; allowed: a multiple of {device_count}')
  _positive('eval.pgd_steps', config.eval.pgd_steps, int)
  require(isinstance(config.eval.num_examples, int) and config.eval.num_examples >= 0,
          f'eval.num_examples={config.eval.num_examples!r} must be an integer >= 0 (0 = all)')
  _positive('eval.every_epochs', config.eval.every_epochs, int)
  require(isinstance(config.ema.decay, (int, float)) and 0 <= config.ema.decay < 1,
          f'ema.decay={config.ema.decay!r}; allowed: a number in [0, 1)')
  require(isinstance(config.ema.start_epoch, int) and config.ema.start_epoch >= 0,
          f'ema.start_epoch={config.ema.start_epoch!r} must be an integer >= 0')
  _positive('checkpoint.keep', config.checkpoint.keep, int)
  require(isinstance(config.checkpoint.every_minutes, (int, float)) and config.checkpoint.every_minutes >= 0
          and math.isfinite(config.checkpoint.every_minutes),
          f'checkpoint.every_minutes={config.checkpoint.every_minutes!r} must be a number >= 0 (0 = off)')
  choice('log.progress', config.log.progress, PROGRESS)
  _positive('log.every_steps', config.log.every_steps, int)
