"""The evaluation binary: clean, PGD-20, CW-20 and AutoAttack accuracy of a training run's checkpoint.

  python -m rpat_jax.evaluate --workdir=runs/prn18_rpat    # the run's own config.json
  python -m rpat_jax.evaluate --config=configs/prn18.py --workdir=runs/prn18_rpat --checkpoint=last \
      --n_examples=1000 --aa_version=custom --attacks=apgd-ce,apgd-t

Results go to `workdir/eval/results.{json,md}`, for a K-seed run per seed to `workdir/eval/seed_<s>/`
(all its seeds, or `--seeds=1,3`; see `rpat_jax.evaluate.run_seeds`). Bad input gives one line,
`rpat_jax.evaluate: error: ...`, and exit status 2.
"""

import json
import types

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from rpat_jax import autoattack
from rpat_jax.run import checkpointing
from rpat_jax.run import cli as cli_lib
from rpat_jax.config import validation
from rpat_jax import data
from rpat_jax.sharding import distributed
from rpat_jax import evaluate
from rpat_jax.run import metrics_log
from rpat_jax.run import paths
from rpat_jax.run import saved_config

PROG = 'rpat_jax.evaluate'


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  """Defines the evaluation binary's flags (and the multi-process ones) on `flag_values`."""
  values = dict(flag_values=flag_values)
  cli = types.SimpleNamespace(
      config=config_flags.DEFINE_config_file('config', None, 'The config the run was trained with (default: '
                                             "the run's own config.json).",
                                             lock_config=False, **values),
      workdir=flags.DEFINE_string('workdir', None, 'The training run directory (its checkpoints).', **values),
      checkpoint=flags.DEFINE_string('checkpoint', 'best', "'best', 'last', or an epoch number.", **values),
      n_examples=flags.DEFINE_integer('n_examples', 10000, 'Evaluate the first N test points (0 = all).', **values),
      aa_version=flags.DEFINE_string('aa_version', 'standard', 'AutoAttack version: standard, plus or custom.',
                                     **values),
      attacks=flags.DEFINE_list('attacks', None, 'With --aa_version=custom: any of '
                                f'{", ".join(autoattack.ATTACKS)}.', **values),
      aa_options=flags.DEFINE_string('aa_options', None, 'JSON per-attack overrides, e.g. '
                                     '\'{"square": {"n_queries": 1000}}\'.', **values),
      batch_size=flags.DEFINE_integer('batch_size', 500, 'Points per compiled attack call.', **values),
      seed=flags.DEFINE_integer('seed', 0, 'AutoAttack and PGD seed.', **values),
      variables=flags.DEFINE_string('variables', None, 'Evaluate these Flax variables (a directory written by '
                                    '`python -m rpat_jax.convert --to=DIR`) instead of a training checkpoint.',
                                    **values),
      seeds=flags.DEFINE_list('seeds', None, 'The training seeds to evaluate, of a run trained with '
                              '--config.seeds=K (default: all of its seeds), e.g. 1,3.', **values),
      ema=flags.DEFINE_bool('ema', False, 'Evaluate the weight average of the checkpoint (a run with '
                            'ema.enabled).', **values),
      bf16=flags.DEFINE_bool('bf16', False, 'Run the model in bfloat16 (float32 is the default and the '
                             'reference).', **values),
      distributed=distributed.define_flags(flag_values))
  flags.mark_flags_as_required(['workdir'], flag_values=flag_values)
  return cli


def main(argv, cli) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  metrics_log.quiet_library_logs()
  try:
    distributed.initialize_from_flags(cli.distributed)  # Several processes: each attacks its devices' slice.
    try:
      options = json.loads(cli.aa_options.value) if cli.aa_options.value else None
    except json.JSONDecodeError as error:
      raise ValueError(f'--aa_options is not JSON: {error}') from None
    if options is not None and not (isinstance(options, dict) and all(isinstance(v, dict) for v in options.values())):
      raise ValueError('--aa_options must be a JSON object of objects, e.g. \'{"square": {"n_queries": 1000}}\'')
    wanted = cli_lib.int_list('--seeds', cli.seeds.value)
    config = cli.config.value if cli.config.value is not None else saved_config.read(cli.workdir.value)
    every = evaluate.run_seeds(config, cli.workdir.value, checkpoint=cli.checkpoint.value,
                               n_examples=cli.n_examples.value, aa_version=cli.aa_version.value,
                               attack_names=cli.attacks.value, aa_options=options, batch_size=cli.batch_size.value,
                               seed=cli.seed.value, bf16=cli.bf16.value, variables_dir=cli.variables.value,
                               ema=cli.ema.value, seeds=wanted)
  except (validation.ConfigError, data.DatasetNotFoundError, distributed.DistributedError,
          FileNotFoundError, ValueError, paths.PathError) as error:  # ConfigChangeError is a ValueError.
    cli_lib.fail(PROG, error)
  except checkpointing.CheckpointError as error:
    cli_lib.fail(PROG, error, status=1)
  if jax.process_index() == 0:
    for position, results in enumerate(every):
      heading = f"## Seed {results['train_seed']}\n\n" if 'train_seed' in results else ''
      print(('\n' if position else '') + heading + evaluate.markdown_table(results), end='')


if __name__ == '__main__':
  cli_lib.run_app(PROG, main, define_flags())
