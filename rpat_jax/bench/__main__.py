"""Throughput of the train step or of the evaluation, against PyTorch; prints one JSON object.

  python -m rpat_jax.bench --config=configs/prn18.py                        # bf16, batch 512, 50 steps
  python -m rpat_jax.bench --config=configs/prn18.py --torch                # + PyTorch reference / tuned
  python -m rpat_jax.bench --config=configs/prn18.py --what=eval --torch    # PGD-20 + AA vs pyautoattack

`--what=train` (default) times the complete compiled train step of the config (batch selection,
augmentation, the attack, the objective, the update) after compilation, on random images shaped like the
config's dataset; FLOPs per image come from XLA's cost analysis, MFU from the peak table in report.py.
`--torch` also times the PyTorch twin of the same step (torch_step.py) in `reference` (fp32 eager, batch
--reference_batch_size, as the official code) and `tuned` (bf16 autocast, channels_last, torch.compile,
batch --batch_size) modes, and reports our speed-up over each. `--what=eval` times PGD-20 and AutoAttack
on --n_examples points (eval_bench.py); with `--torch`, against a PyTorch PGD-20 and the official
`pyautoattack` on the same weights. The PyTorch side needs torch (and pyautoattack), which the package does
not depend on: `pip install -r requirements-test.txt` has both.
"""

import json
import os
import sys
import types

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from rpat_jax import autoattack
from rpat_jax.run import cli as cli_lib
from rpat_jax.config import validation
from rpat_jax import evaluate
from rpat_jax.run import metrics_log
from rpat_jax.config import threats
from rpat_jax.bench import train_bench

PROG = 'rpat_jax.bench'

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  """Defines the benchmark's flags on `flag_values`; returns their holders."""
  values = dict(flag_values=flag_values)
  cli = types.SimpleNamespace(
      config=config_flags.DEFINE_config_file('config', None, 'A config file, e.g. configs/prn18.py.',
                                             lock_config=False, **values),
      what=flags.DEFINE_enum('what', 'train', ['train', 'eval'], 'Time the train step or the evaluation.', **values),
      batch_size=flags.DEFINE_integer('batch_size', 512, 'Global batch of our step and of the tuned PyTorch step.',
                                      **values),
      steps=flags.DEFINE_integer('steps', 50, 'Timed steps (after compilation and --warmup steps).', **values),
      warmup=flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation (PyTorch: its compilation too).',
                                  **values),
      dtype=flags.DEFINE_enum('dtype', None, ['bfloat16', 'float32'],
                              'Our compute dtype (params stay float32). Default: bfloat16 for train, float32 for '
                              'eval (as rpat_jax.evaluate).', **values),
      num_train=flags.DEFINE_integer('num_train', 0, 'Rows of the random on-device dataset (0 = the dataset size).',
                                     **values),
      torch=flags.DEFINE_bool('torch', False, 'Also time the PyTorch side (needs torch; eval: pyautoattack).',
                              **values),
      torch_modes=flags.DEFINE_list('torch_modes', 'reference,tuned', 'PyTorch modes to time: reference, tuned.',
                                    **values),
      reference_batch_size=flags.DEFINE_integer('reference_batch_size', 128, 'Batch of the reference PyTorch step.',
                                                **values),
      flops=flags.DEFINE_bool('flops', True, 'Count FLOPs (compiles the step a second time, unrolled).', **values),
      n_examples=flags.DEFINE_integer('n_examples', 1000, 'eval: points attacked.', **values),
      eval_batch_size=flags.DEFINE_integer('eval_batch_size', 500, 'eval: points per attack call (both sides).',
                                           **values),
      aa_calls=flags.DEFINE_integer('aa_calls', 2, 'eval: our AutoAttack calls, 2 (the first, then compiled) or '
                                    '1 (the first only: rows where one call takes most of an hour).', **values),
      aa_version=flags.DEFINE_string('aa_version', 'standard', 'eval: AutoAttack version (standard, plus).',
                                     **values),
      attacks=flags.DEFINE_list('attacks', None, 'eval, with --aa_version=custom: any of '
                                f'{", ".join(autoattack.ATTACKS)}.', **values),
      workdir=flags.DEFINE_string('workdir', None, 'eval: a training run whose checkpoint to attack (default: '
                                  'the initial weights, labels = their own predictions).', **values),
      checkpoint=flags.DEFINE_string('checkpoint', 'best', "eval: 'best', 'last' or an epoch, with --workdir.",
                                     **values),
      profile_dir=flags.DEFINE_string('profile_dir', '', 'train: trace 3 more steps with jax.profiler into this '
                                      'directory (XLA dumps: XLA_FLAGS=--xla_dump_to=DIR).', **values),
      out=flags.DEFINE_string('out', None, 'Also write the JSON to this file.', **values))
  flags.mark_flags_as_required(['config'], flag_values=flag_values)
  return cli


def _check_flags(cli):
  for name, value in (('steps', cli.steps.value), ('batch_size', cli.batch_size.value),
                      ('reference_batch_size', cli.reference_batch_size.value), ('n_examples', cli.n_examples.value),
                      ('eval_batch_size', cli.eval_batch_size.value)):
    if value < 1:
      raise validation.ConfigError(f'--{name}={value}; allowed: an integer >= 1')
  evaluate.check_checkpoint(cli.checkpoint.value)
  if cli.workdir.value and not os.path.isdir(cli.workdir.value):
    raise validation.ConfigError(f'--workdir={cli.workdir.value} does not exist')
  if cli.aa_calls.value not in (1, 2):
    raise validation.ConfigError(f'--aa_calls={cli.aa_calls.value}; allowed: 1, 2')
  if cli.warmup.value < 0:
    raise validation.ConfigError(f'--warmup={cli.warmup.value}; allowed: an integer >= 0')
  unknown = set(cli.torch_modes.value) - {'reference', 'tuned'}
  if unknown:
    raise validation.ConfigError(f'--torch_modes has {", ".join(sorted(unknown))}; allowed: reference, tuned')


def _torch_step(config, cli):
  """The PyTorch side's module, once the config is one its twin implements (before any of our work)."""
  try:
    from rpat_jax.bench import torch_step  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise validation.ConfigError(f'--torch needs PyTorch ({error}); pip install -r requirements-test.txt')
  torch_step.check_supported(config, keys=None if cli.what.value == 'train' else ('model.normalize',))
  return torch_step


def _torch_rows(row, context, torch_step, cli):
  """Times the PyTorch twin in each mode; each row gets our speed-up over it."""
  config = context['config']
  rows = {}
  for mode in cli.torch_modes.value:
    batch = cli.reference_batch_size.value if mode == 'reference' else cli.batch_size.value
    result = torch_step.time_mode(config, context['variables'], num_classes=context['num_classes'],
                                  image_shape=context['image_shape'], mode=mode, batch_size=batch,
                                  steps=cli.steps.value, warmup=max(cli.warmup.value, 1), seed=config.seed)
    result['jax_speedup'] = row['images_per_second'] / result['images_per_second']
    rows[mode] = result
  import torch  # pylint: disable=import-outside-toplevel
  return {'versions': {'torch': torch.__version__, 'cuda': torch.version.cuda}, **rows}


def main(argv, cli) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  metrics_log.quiet_library_logs()
  try:
    _check_flags(cli)
    config = threats.resolve(cli.config.value)
    torch_step = _torch_step(config, cli) if cli.torch.value else None
    if cli.what.value == 'train':
      row, context = train_bench.run(config, batch_size=cli.batch_size.value, dtype=cli.dtype.value or 'bfloat16',
                                     steps_to_time=cli.steps.value, warmup=cli.warmup.value,
                                     num_train=cli.num_train.value, count_flops=cli.flops.value,
                                     profile_dir=cli.profile_dir.value)
      row['torch'] = _torch_rows(row, context, torch_step, cli) if torch_step else None
    else:
      from rpat_jax.bench import eval_bench  # pylint: disable=import-outside-toplevel
      row = eval_bench.run(config, n_examples=cli.n_examples.value, batch_size=cli.eval_batch_size.value,
                           dtype=cli.dtype.value or 'float32', aa_version=cli.aa_version.value,
                           workdir=cli.workdir.value, checkpoint=cli.checkpoint.value, with_torch=cli.torch.value,
                           attack_names=cli.attacks.value, aa_calls=cli.aa_calls.value)
  except (validation.ConfigError, ValueError, FileNotFoundError) as error:
    cli_lib.fail(PROG, error)
  row['command'] = ' '.join(['python -m rpat_jax.bench'] + sys.argv[1:])
  text = json.dumps(row, indent=1, default=float)
  if cli.out.value and jax.process_index() == 0:
    with open(cli.out.value, 'w') as f:
      f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  cli_lib.run_app(PROG, main, define_flags())
