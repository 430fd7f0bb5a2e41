"""The paper's motivating diagnostic on a training run: how far the logits move under a perturbation, for
the points that stay correct and those that do not, and the linearity profile along the segment.

  python -m rpat_jax.perception --workdir=runs/prn18_rpat                          # PGD-20, best checkpoint
  python -m rpat_jax.perception --workdir=runs/prn18_rpat --perturbation=random --n_examples=1000

It reads the run's own `config.json` (threat, model, data) and writes
`workdir/eval/perception_<perturbation>.json` and `.png` (`_ema` with `--ema`); for a run trained with
`--config.seeds=K`, each seed's (all, or `--seeds=1,3`) in `workdir/eval/seed_<s>/`. Bad input gives one line,
`rpat_jax.perception: error: ...`, and exit status 2.
"""

import json
import types

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from rpat_jax.run import cli as cli_lib
from rpat_jax.run import checkpointing
from rpat_jax.config import validation
from rpat_jax import data
from rpat_jax.sharding import distributed
from rpat_jax import evaluate
from rpat_jax.run import metrics_log
from rpat_jax.run import paths
from rpat_jax import perception
from rpat_jax.run import saved_config
from rpat_jax import seeds as seeds_lib
from rpat_jax.config import threats
from rpat_jax.perception import figure

PROG = 'rpat_jax.perception'


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  values = dict(flag_values=flag_values)
  cli = types.SimpleNamespace(
      workdir=flags.DEFINE_string('workdir', None, 'The training run (its config.json and checkpoints).', **values),
      checkpoint=flags.DEFINE_string('checkpoint', 'best', "'best', 'last', or an epoch number.", **values),
      perturbation=flags.DEFINE_string('perturbation', 'pgd', "'pgd' (PGD-20 with the run's threat) or 'random' "
                                       '(uniform noise in the eps-box).', **values),
      n_examples=flags.DEFINE_integer('n_examples', 10000, 'The first N test points (0 = all).', **values),
      batch_size=flags.DEFINE_integer('batch_size', 100, 'Points per call (the official per-batch averaging uses '
                                      'it too).', **values),
      seed=flags.DEFINE_integer('seed', 0, 'Key of the perturbations.', **values),
      ema=flags.DEFINE_bool('ema', False, 'The weight average of the checkpoint.', **values),
      seeds=flags.DEFINE_list('seeds', None, 'The training seeds to diagnose, of a run trained with '
                              '--config.seeds=K (default: all of its seeds), e.g. 1,3.', **values),
      official_averaging=flags.DEFINE_bool('official_averaging', False, 'Average group means per batch, '
                                           'weighted by the batch size, as the official evals.py.', **values),
      distributed=distributed.define_flags(flag_values))
  flags.mark_flags_as_required(['workdir'], flag_values=flag_values)
  return cli


def run(workdir: str, **options):
  """`run_seeds` for a single run (or one seed of a K-seed run, `seeds=[s]`): its diagnostic."""
  config = saved_config.read(workdir)
  seeds_lib.require_one(config, options.get('seeds'), 'diagnostic')
  result, = run_seeds(workdir, **options)
  return result


def run_seeds(workdir: str, *, checkpoint: str = 'best', kind: str = 'pgd', n_examples: int = 10000,
              batch_size: int = 100, seed: int = 0, ema: bool = False, official_averaging: bool = False,
              seeds=None):
  """The diagnostic of a run's checkpoint; writes eval/perception_<kind>[_ema].{json,png} (a K-seed run:
  each seed's in eval/seed_<s>/, with the seed as `train_seed`), returns the dicts, one per seed.

  seeds: the training seeds of a K-seed run to diagnose (None: all); one the run did not train is a ValueError.
  """
  evaluate.check_options(checkpoint=checkpoint, n_examples=n_examples, batch_size=batch_size)
  if kind not in ('pgd', 'random'):
    raise ValueError(f'--perturbation={kind}; allowed: pgd, random')
  config = threats.resolve(saved_config.read(workdir))
  validation.validate(config, jax.device_count())
  chosen = seeds_lib.choose(config, seeds)
  with config.unlocked():
    config.model.dtype = 'float32'
  info = data.describe(config.data)
  count = info.num_test if n_examples == 0 else min(n_examples, info.num_test)
  images, labels = data.load_rows(config.data, 'test', np.arange(count))
  x, y = images.astype(np.float32) / 255.0, labels.astype(np.int32)
  restored = evaluate.restore_checkpoint(config, workdir, checkpoint=checkpoint, info=info)  # Every seed, once.
  devices = jax.device_count()
  batch_size = -(-min(batch_size, count) // devices) * devices
  results = []
  for index, train_seed in chosen:
    forward, params, batch_stats, epoch = evaluate.checkpoint_variables(*restored, checkpoint=checkpoint, ema=ema,
                                                                        seed_index=index)
    logits_fn = lambda images, params=params, batch_stats=batch_stats: forward.eval_logits(params, batch_stats,
                                                                                           images)
    result = perception.diagnose(logits_fn, x, y, config.attack, kind=kind, seed=seed, batch_size=batch_size,
                                 official_averaging=official_averaging)
    result.update(checkpoint=checkpoint, checkpoint_step=epoch, ema=ema, seed=seed, batch_size=batch_size,
                  weights_digest=evaluate.weights_digest(params, batch_stats), method=config.method,
                  rpat=bool(config.rpat.enabled), model=config.model.name, norm=config.attack.norm,
                  eps=float(config.attack.eps))
    title = (f"{config.method}{' + RPAT' if config.rpat.enabled else ''}, {config.model.name}, epoch {epoch} "
             f'({checkpoint})')
    if seeds_lib.stacked(config):
      result.update(train_seed=train_seed)
      title += f', seed {train_seed}'
    if jax.process_index() == 0:
      out_dir = paths.make_dir(paths.as_path(workdir) / 'eval', what='evaluation directory')
      if seeds_lib.stacked(config):
        out_dir = paths.make_dir(out_dir / seeds_lib.subdir(config, train_seed), what='evaluation directory')
      name = f'perception_{kind}{"_ema" if ema else ""}'
      paths.write_atomic(out_dir / f'{name}.json', json.dumps(result, indent=2))
      paths.write_atomic(out_dir / f'{name}.png', figure.draw(result, title))
      logging.info('Wrote %s.json and .png', out_dir / name)
    results.append(result)
  return results


def main(argv, cli) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  metrics_log.quiet_library_logs()
  try:
    distributed.initialize_from_flags(cli.distributed)
    results = run_seeds(cli.workdir.value, checkpoint=cli.checkpoint.value, kind=cli.perturbation.value,
                        n_examples=cli.n_examples.value, batch_size=cli.batch_size.value, seed=cli.seed.value,
                        ema=cli.ema.value, official_averaging=cli.official_averaging.value,
                        seeds=cli_lib.int_list('--seeds', cli.seeds.value))
  except (validation.ConfigError, data.DatasetNotFoundError, distributed.DistributedError,
          FileNotFoundError, ValueError, paths.PathError) as error:
    cli_lib.fail(PROG, error)
  except checkpointing.CheckpointError as error:
    cli_lib.fail(PROG, error, status=1)
  if jax.process_index() == 0:
    for result in results:
      rows = [f"{name}: {g['count']} points, d_full {g['d_full']:.4g}, first/second {g['first_over_second']:.3g}, "
              f"linearity error {g['linearity_error']:.3g}" for name, g in result['groups'].items()]
      seed = f"seed {result['train_seed']}: " if 'train_seed' in result else ''
      print(f"{seed}clean {result['clean_acc']:.2%}, perturbed {result['perturbed_acc']:.2%}\n" + '\n'.join(rows))


if __name__ == '__main__':
  cli_lib.run_app(PROG, main, define_flags())
