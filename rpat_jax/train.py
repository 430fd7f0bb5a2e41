"""The training loop: data on the device, one compiled step, per-epoch evaluation and checkpoints.

Resume precedence: a checkpoint in `workdir/checkpoints` always wins; otherwise training starts from
`config.seed`. Everything random is a function of the run key and the step (the data order of epoch e
is a permutation keyed by (data key, e)), so a resumed run repeats an uninterrupted one exactly.
"""

import math
import os
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from rpat_jax import checkpointing
from rpat_jax import metrics_log
from rpat_jax import parallel
from rpat_jax import steps
from rpat_jax.experiment import Experiment
from rpat_jax.experiment import create as create_experiment


def run_keys(state: steps.TrainState):
  """(step key, data key, eval key), all derived from the checkpointed run key."""
  step_key, data_key, eval_key = jax.random.split(jax.random.wrap_key_data(state.rng), 3)
  return step_key, data_key, eval_key


def make_epoch_step(experiment: Experiment, *, with_rpat: Optional[bool] = None):
  """`step(state, train_images, train_labels) -> (state, metrics)`: selects the batch, then trains.

  The batch is chosen on the device from the step count: a per-epoch permutation of the training rows
  (last partial batch dropped; a new permutation each epoch), gathered from the row-sharded dataset
  (`parallel.gather_rows`). Nothing crosses from the host, and the batches are the same on any number
  of devices. with_rpat: as `steps.make_train_step` (the loop passes `steps.rpat_active` of the epoch).
  """
  config, num_train = experiment.config, experiment.info.num_train
  train_step = steps.make_train_step(config, experiment.forward, experiment.steps_per_epoch, with_rpat=with_rpat)
  batch_size, steps_per_epoch = config.batch_size, experiment.steps_per_epoch

  def step(state, images, labels):
    step_key, data_key, _ = run_keys(state)
    epoch, index = jnp.divmod(state.step, steps_per_epoch)
    order = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_train)
    chosen = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
    batch_images, batch_labels = parallel.gather_rows(experiment.mesh, images, labels, chosen)
    return train_step(state, {'image': batch_images, 'label': batch_labels}, step_key)

  return step


def compile_epoch_step(experiment: Experiment, state, images, labels, *, with_rpat: Optional[bool] = None):
  """The epoch step compiled for these arguments: the state donated, results replicated."""
  replicated = parallel.replicated(experiment.mesh)
  step = jax.jit(make_epoch_step(experiment, with_rpat=with_rpat), donate_argnums=0,
                 out_shardings=(replicated, replicated))
  return step.lower(state, images, labels).compile()


def compile_evaluate(experiment: Experiment, state, eval_data):
  """`evaluate(state, images, labels, mask) -> sums`, the per-epoch clean and PGD-k evaluation, compiled."""
  evaluate = steps.make_evaluate(experiment.config, experiment.forward)
  return jax.jit(lambda s, i, l, m: evaluate(s, i, l, m, run_keys(s)[2]),
                 out_shardings=parallel.replicated(experiment.mesh)).lower(state, *eval_data).compile()


def _mean_metrics(step_metrics) -> Dict[str, float]:
  host = jax.device_get(step_metrics)
  return {key: float(np.mean([m[key] for m in host])) for key in host[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the final state."""
  experiment = create_experiment(config)
  config, info = experiment.config, experiment.info
  state = experiment.init_state()
  logging.info('%s: %d parameters, %d classes, %d train / %d test images, %d steps per epoch, %d devices '
               'in %d processes', config.model.name, sum(p.size for p in jax.tree.leaves(state.params)),
               info.num_classes, info.num_train, info.num_test, experiment.steps_per_epoch, jax.device_count(),
               jax.process_count())

  os.makedirs(workdir, exist_ok=True)
  checkpoints = checkpointing.Checkpoints(workdir, config.checkpoint.keep)
  meta = {'epoch': 0, 'best_pgd_acc': -1.0, 'best_epoch': 0}
  if checkpoints.latest_epoch() is not None:
    state, meta = checkpoints.restore(state)
    logging.info('Resumed from %s at epoch %d (step %d).', workdir, meta['epoch'], int(state.step))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  # Each process reads only the rows its devices hold; the arrays stay on the devices for the whole run.
  train_images, train_labels = experiment.train_data()
  eval_data = experiment.test_data()

  compile_start = time.perf_counter()
  epoch_steps = {}  # with_rpat -> compiled step; a delayed RPAT compiles its second step when it starts.

  def epoch_step_for(epoch: int):
    with_rpat = steps.rpat_active(config, epoch)
    if with_rpat not in epoch_steps:
      epoch_steps[with_rpat] = compile_epoch_step(experiment, state, train_images, train_labels,
                                                  with_rpat=with_rpat)
    return epoch_steps[with_rpat]

  if meta['epoch'] < config.epochs:
    epoch_step_for(meta['epoch'])
  evaluate = compile_evaluate(experiment, state, eval_data)
  logging.info('Compiled the train step and the evaluation in %.1fs.', time.perf_counter() - compile_start)

  log = metrics_log.MetricsLog(workdir, resume_epoch=meta['epoch'])
  for epoch in range(meta['epoch'], config.epochs):
    row = _train_epoch(config, epoch_step_for(epoch), state, train_images, train_labels,
                       experiment.steps_per_epoch, epoch)
    state = row.pop('state')
    if (epoch + 1) % config.eval.every_epochs == 0 or epoch + 1 == config.epochs:
      eval_start = time.perf_counter()
      sums = jax.device_get(evaluate(state, *eval_data))
      row['test_clean_acc'] = float(sums['clean_correct'] / sums['count'])
      row['test_pgd_acc'] = float(sums['pgd_correct'] / sums['count'])
      if config.ema.enabled:  # The weight average, evaluated the same way (same points, same key).
        sums = jax.device_get(evaluate(steps.averaged(state), *eval_data))
        row['test_ema_clean_acc'] = float(sums['clean_correct'] / sums['count'])
        row['test_ema_pgd_acc'] = float(sums['pgd_correct'] / sums['count'])
      row['eval_seconds'] = time.perf_counter() - eval_start
    is_best = row.get('test_pgd_acc', -1.0) > meta['best_pgd_acc']
    if is_best:
      meta.update(best_pgd_acc=row['test_pgd_acc'], best_epoch=epoch + 1)
    meta['epoch'] = epoch + 1
    log.write(row)  # Before the checkpoint: a resume trims rows past the checkpoint it restores.
    checkpoints.save(epoch + 1, state, dict(meta), is_best)
  checkpoints.close()
  log.close()
  return state


def _train_epoch(config, epoch_step, state, train_images, train_labels, steps_per_epoch: int,
                 epoch: int) -> Dict[str, Any]:
  """Runs one epoch of compiled steps; metrics reach the host once, at the end."""
  progress = metrics_log.Progress(config.log.progress, steps_per_epoch, config.batch_size, epoch + 1)
  start = time.perf_counter()
  step_metrics = []
  with jax.transfer_guard('disallow'):  # Proves the epoch makes no implicit host<->device copy.
    for i in range(steps_per_epoch):
      state, metrics = epoch_step(state, train_images, train_labels)
      step_metrics.append(metrics)
      if (i + 1) % config.log.every_steps == 0 and i >= 2:
        # Wait for a step two behind, so the device queue never runs dry while we report.
        jax.block_until_ready(step_metrics[i - 2])
        progress.update(i - 1, config.log.every_steps)
  means = _mean_metrics(step_metrics)
  seconds = time.perf_counter() - start
  progress.close()
  first_step = epoch * steps_per_epoch + 1
  if not math.isfinite(means['loss']):
    raise FloatingPointError(f'non-finite training loss in steps {first_step}-{first_step + steps_per_epoch - 1}'
                             f' (epoch {epoch + 1})')
  row = {'epoch': epoch + 1, 'step': int((epoch + 1) * steps_per_epoch), 'lr': means.pop('lr'),
         'train_loss': means.pop('loss')}
  row.update({f'train_{key}': value for key, value in means.items()})
  row.update(epoch_seconds=seconds, images_per_second=steps_per_epoch * config.batch_size / seconds,
             state=state)
  return row
