"""Trains and evaluates an adversarially robust classifier with RPAT.

  python -m rpat_jax.main --config=configs/smoke.py --workdir=/tmp/rpat_smoke
  python -m rpat_jax.main --config=configs/prn18.py --workdir=runs/prn18_rpat --config.rpat.lam=0.5

Running the same command again resumes from the newest checkpoint in `workdir`. SIGTERM or Ctrl-C saves
the current step and exits with status 128 + signal; bad input (flags, config, a workdir that cannot be
written, is in use, or holds a run with another config) is one line and status 2; a failed save or a
non-finite loss is one line and status 1. On several hosts, run the same command in every process (see
launch/): `--distributed`, `--coordinator_address`, `--num_processes`, `--process_id`, `--init_timeout`.
"""

import types

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from rpat_jax.run import checkpointing
from rpat_jax.run import cli as cli_lib
from rpat_jax.config import validation
from rpat_jax import data
from rpat_jax.sharding import devices
from rpat_jax.sharding import distributed
from rpat_jax.run import metrics_log
from rpat_jax.run import paths
from rpat_jax.run import preemption
from rpat_jax.run import saved_config
from rpat_jax.config import threats
from rpat_jax import train
from rpat_jax.data import prepare

PROG = 'rpat_jax'


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  """Defines --config, --workdir and the multi-process flags on `flag_values`; returns their holders."""
  cli = types.SimpleNamespace(
      workdir=flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and TensorBoard events.',
                                  flag_values=flag_values),
      config=config_flags.DEFINE_config_file('config', None, 'A config file, e.g. configs/prn18.py.',
                                             lock_config=True, flag_values=flag_values),
      distributed=distributed.define_flags(flag_values))
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=flag_values)
  return cli


def main(argv, cli) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  metrics_log.quiet_library_logs()
  try:
    config = threats.resolve(cli.config.value)
    validation.validate(config, device_count=None)  # What needs no device: before joining.
    prepare.ensure_prepared(config.data)  # CIFAR-10/100 on first use; one process per data_dir writes.
    distributed.initialize_from_flags(cli.distributed)
    logging.info('process %d of %d; %d local / %d global devices (%s)', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(), jax.default_backend())
    distributed.check_same_everywhere('--config', config.to_json_best_effort(sort_keys=True))
    distributed.check_same_everywhere('--workdir', cli.workdir.value)
    validation.validate(config, devices.count())
    train.train_and_evaluate(config, cli.workdir.value)
  except (validation.ConfigError, data.DatasetNotFoundError, distributed.DistributedError, paths.PathError,
          saved_config.ConfigChangeError, prepare.PrepareError) as error:
    cli_lib.fail(PROG, error)
  except checkpointing.CheckpointSaveError as error:  # As a command, not left waiting on the failed save.
    cli_lib.fail(PROG, error, status=1, abandon_threads=__name__ == '__main__')
  except (checkpointing.CheckpointError, train.NonFiniteLossError) as error:
    cli_lib.fail(PROG, error, status=1)
  except preemption.Preempted as stopped:
    cli_lib.fail(PROG, stopped, status=stopped.exit_status, label='preempted')


if __name__ == '__main__':
  cli_lib.run_app(PROG, main, define_flags())
