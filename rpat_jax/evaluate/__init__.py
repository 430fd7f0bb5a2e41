"""Evaluates a checkpoint written by `rpat_jax.main`: clean, PGD-20, CW-20 and AutoAttack accuracy.

`run_seeds(config, workdir, ...)` is the library call (`run`: its one result, for a single run); the
command line (`__main__.py`) wraps it:

  python -m rpat_jax.evaluate --config=configs/prn18.py --workdir=runs/prn18_rpat
  python -m rpat_jax.evaluate --config=configs/prn18.py --workdir=runs/prn18_rpat --checkpoint=last \
      --n_examples=1000 --aa_version=custom --attacks=apgd-ce,apgd-t

Results go to `workdir/eval/results.json` and `results.md` (`results_ema.*` with `--ema`, the weight
average of a run trained with `ema.enabled`), written atomically; each names its checkpoint's epoch and
a digest of the attacked weights. AutoAttack saves its progress after every chunk to
`workdir/eval/aa_state_<checkpoint>.npz`: running the same command again resumes it, but only for the
same weights (the digest), points and settings; otherwise it starts afresh and says so. One evaluation
at a time per run (`eval/lock`); training may go on beside it. A K-seed run (`config.seeds`) is restored
once and each seed evaluated in turn (all, or `seeds=`), each into `eval/seed_<s>/` with its own AutoAttack
state, so a rerun resumes per seed; the attacks' programs close over the weights and compile per seed.
The threat model (norm, eps; PGD/CW step size) is the config's `attack.*`; the model runs in float32
unless `--bf16`.
"""

import hashlib
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rpat_jax import autoattack
from rpat_jax.config import validation
from rpat_jax import data
from rpat_jax import seeds as seeds_lib
from rpat_jax.sharding import devices
from rpat_jax.sharding import distributed
from rpat_jax.run import paths
from rpat_jax.run import saved_config
from rpat_jax.config import threats
from rpat_jax.run import workdir_lock
from rpat_jax.evaluate.pgd import accuracies as pgd_accuracies
from rpat_jax.evaluate.pgd import make_robustness
from rpat_jax.evaluate.variables import checkpoint_variables, restore_checkpoint, restore_variables

__all__ = ['run', 'run_seeds', 'summary', 'markdown_table', 'pgd_accuracies', 'make_robustness', 'restore_variables',
           'restore_checkpoint', 'checkpoint_variables', 'weights_digest', 'check_checkpoint',
           'check_options']


def weights_digest(params, batch_stats) -> str:
  """A short SHA-256 of the variables' names, dtypes, shapes and bytes: which weights a result belongs to."""
  digest = hashlib.sha256()
  leaves, _ = jax.tree_util.tree_flatten_with_path({'params': params, 'batch_stats': batch_stats})
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    value = np.asarray(jax.device_get(leaf))
    digest.update(f'{jax.tree_util.keystr(path)}:{value.dtype}:{value.shape}'.encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()[:16]


def check_checkpoint(checkpoint: str) -> None:
  """Raises ValueError naming --checkpoint unless it is 'best', 'last' or an epoch number."""
  if checkpoint not in ('best', 'last') and not (str(checkpoint).isdigit() and int(checkpoint) > 0):
    raise ValueError(f"--checkpoint={checkpoint}; allowed: best, last, or an epoch number >= 1")


def check_options(*, checkpoint: str, n_examples: int, batch_size: int) -> None:
  """Raises ValueError naming the flag for an evaluation option that cannot run."""
  check_checkpoint(checkpoint)
  if not isinstance(n_examples, int) or n_examples < 0:
    raise ValueError(f'--n_examples={n_examples}; allowed: an integer >= 0 (0 = the whole test split)')
  if not isinstance(batch_size, int) or batch_size <= 0:
    raise ValueError(f'--batch_size={batch_size}; allowed: a positive integer')

def summary(clean: float, robust: float):
  """Mean = (C + A) / 2 and NRR = 2CA / (C + A), the paper's trade-off numbers."""
  return (clean + robust) / 2, (2 * clean * robust / (clean + robust)) if clean + robust > 0 else 0.0


def markdown_table(results) -> str:
  rows = [('Clean', results['clean_acc']), ('PGD-20', results['pgd20_acc']), ('CW-20', results['cw20_acc']),
          ('AA', results['aa_acc']), ('Mean', results['mean']), ('NRR', results['nrr'])]
  lines = ['| metric | % |', '|---|---|'] + [f'| {name} | {100 * value:.2f} |' for name, value in rows]
  source = (f"checkpoint epoch {results['checkpoint_step']} ({results['checkpoint']}, weights "
            f"{results.get('weights_digest', '?')})"
            if results['checkpoint_step'] is not None else 'converted variables')
  if 'train_seed' in results:  # One seed of a K-seed run.
    source += f", training seed {results['train_seed']}"
  lines += ['', f"{results['n_examples']} test points, {source}, {results['norm']} eps {results['eps']:.5f}, "
            f"AutoAttack {results['aa_version']} ({', '.join(results['per_attack'])}), {results['seconds']:.1f} s."]
  lines += ['', '| after attack | robust % |', '|---|---|']
  lines += [f'| {name} | {100 * value:.2f} |' for name, value in results['per_attack'].items()]
  raised = [f"{name}: {flag['detail']}" for name, flag in results['flags'].items() if flag['raised']]
  lines += ['', 'Sanity checks: ' + ('; '.join(raised) if raised else 'none raised') + '.']
  return '\n'.join(lines) + '\n'


def run(config, workdir: str, **options):
  """`run_seeds` for a single run (or one seed of a K-seed run, `seeds=[s]`): its results dict."""
  if not options.get('variables_dir'):
    seeds_lib.require_one(config, options.get('seeds'), 'result')
  results, = run_seeds(config, workdir, **options)
  return results


def run_seeds(config, workdir: str, *, checkpoint: str = 'best', n_examples: int = 10000,
              aa_version: str = 'standard', attack_names=None, aa_options=None, batch_size: int = 500, seed: int = 0,
              bf16: bool = False, variables_dir=None, ema: bool = False, seeds=None):
  """Evaluates a training run's checkpoint (or converted variables) and writes
  workdir/eval/results.{json,md} (results_ema.* for the weight average); for a K-seed run each seed's in
  workdir/eval/seed_<s>/, with the seed as `train_seed`. Returns the results dicts, one per seed evaluated.

  checkpoint: 'best', 'last' or an epoch. n_examples: the first N test points (0: all). aa_version,
  attack_names, aa_options: AutoAttack's version, its attacks for 'custom', per-attack overrides.
  batch_size: points per compiled attack call, over all devices. seed: the attacks' key. bf16: the model
  in bfloat16. variables_dir: a `python -m rpat_jax.convert --to` directory instead of a checkpoint.
  seeds: the training seeds to evaluate (None: all of the run's); one the run did not train is a ValueError.
  """
  started = time.time()
  check_options(checkpoint=checkpoint, n_examples=n_examples, batch_size=batch_size)
  config = threats.resolve(config)
  validation.validate(config, devices.count())
  autoattack.ensemble.resolve_attacks(aa_version, attack_names)  # Bad attack names fail before any work.
  if variables_dir and seeds:
    raise ValueError(f'--seeds={",".join(map(str, seeds))}: converted variables (--variables) are one model')
  if not variables_dir:
    saved_config.check_seeds(config, workdir)  # A --config with other seeds would misread the checkpoint.
  chosen = [(None, None)] if variables_dir else seeds_lib.choose(config, seeds)  # (index on the seed axis, seed)
  info = data.describe(config.data)
  count = info.num_test if n_examples <= 0 else min(n_examples, info.num_test)
  images, labels = data.load_rows(config.data, 'test', np.arange(count))  # Only the points evaluated.
  x = images.astype(np.float32) / 255.0
  y = labels.astype(np.int32)
  with config.unlocked():
    config.model.dtype = 'bfloat16' if bf16 else 'float32'
  if variables_dir:
    converted = restore_variables(config, workdir, info=info, variables_dir=variables_dir)
    variables_of = lambda index: converted
  else:  # Restored once: a K-seed run's seeds are slices of one stacked state.
    restored = restore_checkpoint(config, workdir, checkpoint=checkpoint, info=info)
    variables_of = lambda index: checkpoint_variables(*restored, checkpoint=checkpoint, ema=ema, seed_index=index)
  eval_dir = paths.as_path(workdir) / 'eval'
  lock = None

  def take_eval_dir():
    nonlocal lock
    paths.make_dir(eval_dir, what='evaluation directory')
    lock = workdir_lock.WorkdirLock(eval_dir, what='evaluation directory')

  try:
    distributed.on_process_zero(take_eval_dir)
    every = []
    for index, train_seed in chosen:
      forward, params, batch_stats, epoch = variables_of(index)
      subdir = seeds_lib.subdir(config, train_seed) if not variables_dir else ''
      out_dir = eval_dir / subdir if subdir else eval_dir
      if subdir:
        distributed.on_process_zero(lambda out_dir=out_dir: paths.make_dir(out_dir, what='evaluation directory'))
        logging.info('seed %d (%d of %d)', train_seed, len(every) + 1, len(chosen))
      every.append(_evaluate_one(config, forward, params, batch_stats, x, y, out_dir=out_dir, epoch=epoch,
                                 checkpoint='variables' if variables_dir else checkpoint, aa_version=aa_version,
                                 attack_names=attack_names, aa_options=aa_options, batch_size=batch_size,
                                 seed=seed, ema=ema, train_seed=train_seed if subdir else None, started=started))
      started = time.time()  # The next seed's time is its own.
    return every
  finally:
    if lock is not None:
      lock.release()


def _evaluate_one(config, forward, params, batch_stats, x, y, *, out_dir, epoch, checkpoint, aa_version,
                  attack_names, aa_options, batch_size, seed, ema, train_seed, started):
  """Clean, PGD-20, CW-20 and AutoAttack of one model's variables; writes out_dir/results[_ema].{json,md}.
  train_seed: the seed of a K-seed run these weights are (None for a single run: no key)."""
  count = len(x)
  digest = weights_digest(params, batch_stats)
  logits_fn = lambda images: forward.eval_logits(params, batch_stats, images).astype(jnp.float32)
  per = devices.count()  # Batches are split over all of them: round up to a multiple.
  batch_size = -(-min(batch_size, count) // per) * per
  clean_acc, pgd20_acc, cw20_acc = pgd_accuracies(logits_fn, x, y, config.attack, batch_size=batch_size,
                                                  seed=seed)
  logging.info('clean %.4f, PGD-20 %.4f, CW-20 %.4f on %d points', clean_acc, pgd20_acc, cw20_acc, count)
  binding = f'weights {digest} in {config.model.dtype}, {config.data.name} test points'
  aa = autoattack.evaluate(logits_fn, x, y, norm=config.attack.norm, eps=config.attack.eps, version=aa_version,
                           seed=seed, batch_size=batch_size, attacks=attack_names, attack_options=aa_options,
                           state_path=str(out_dir / f'aa_state_{checkpoint}{"_ema" if ema else ""}.npz'),
                           state_binding=binding, log=logging.info)
  mean, nrr = summary(clean_acc, aa['robust_acc'])
  results = {'clean_acc': clean_acc, 'pgd20_acc': pgd20_acc, 'cw20_acc': cw20_acc, 'aa_acc': aa['robust_acc'],
             'mean': mean, 'nrr': nrr, 'n_examples': count, 'checkpoint': checkpoint, 'checkpoint_step': epoch,
             'weights_digest': digest, 'per_attack': aa['per_attack'], 'seconds': time.time() - started,
             'aa_seconds': aa['seconds'], 'flags': aa['flags'], 'norm': config.attack.norm,
             'eps': float(config.attack.eps), 'aa_version': aa_version, 'max_perturbation': aa['max_perturbation'],
             'nan_count': aa['nan_count'], 'model': config.model.name, 'dtype': config.model.dtype, 'seed': seed,
             'ema': ema}
  if train_seed is not None:
    results['train_seed'] = train_seed
  if jax.process_index() == 0:  # One writer; the average's results sit beside the online model's.
    name = 'results_ema' if ema else 'results'
    paths.write_atomic(out_dir / f'{name}.json', json.dumps(results, indent=2))
    paths.write_atomic(out_dir / f'{name}.md', markdown_table(results))
  return results
