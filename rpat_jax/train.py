"""The training loop: data on the device, one compiled step, per-epoch evaluation and checkpoints.

Resume precedence: the newest readable checkpoint in the workdir (an epoch's, or a mid-epoch one written on
SIGTERM/SIGINT or every `checkpoint.every_minutes`) always wins; otherwise training starts from
`config.seed`. Everything random is a function of the run key and the step (the data order of epoch e is a
permutation keyed by (data key, e)), so a resumed run repeats an uninterrupted one exactly, also from the
middle of an epoch (the epoch's per-step metrics so far are in the checkpoint).

Before anything is built the workdir is made and proved writable, locked against a second run, and its
`config.json` compared with the config (`saved_config`); every failure is one line (`main` prints it).
"""

import dataclasses
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from rpat_jax.run import checkpointing
from rpat_jax.sharding import distributed
from rpat_jax.run import metrics_log
from rpat_jax.sharding import parallel
from rpat_jax.run import paths
from rpat_jax.run import preemption
from rpat_jax.run import saved_config
from rpat_jax import seeds
from rpat_jax import steps
from rpat_jax.run import workdir_lock
from rpat_jax.experiment import Experiment
from rpat_jax.experiment import create as create_experiment


def run_keys(state: steps.TrainState):
  """(step key, data key, eval key), all derived from the checkpointed run key."""
  step_key, data_key, eval_key = jax.random.split(jax.random.wrap_key_data(state.rng), 3)
  return step_key, data_key, eval_key


def per_seed(experiment: Experiment, fn, in_axes=0):
  """`fn` over the seed axis of a K-seed run, in one program (`seeds.compute`): vectorised ('vmap': every
  op of the step once, K wide) or unrolled ('unroll': the single run's step written K times); `fn` itself
  for a single run. in_axes: 0 (on the seed axis) or None (shared), per argument."""
  config = experiment.config
  if not seeds.stacked(config):
    return fn
  if seeds.compute(config) == 'vmap':
    return jax.vmap(fn, in_axes=in_axes)

  def unrolled(*args):
    axes = (in_axes,) * len(args) if isinstance(in_axes, int) else in_axes
    # The seeds this program holds: all K, or a device's block of them under shard_map (the 'seeds' layout).
    held = next(jax.tree.leaves(arg)[0].shape[0] for arg, axis in zip(args, axes) if axis == 0)
    outputs = [fn(*[seeds.select(arg, index) if axis == 0 else arg for arg, axis in zip(args, axes)])
               for index in range(held)]
    return jax.tree.map(lambda *values: jnp.stack(values), *outputs)

  return unrolled


def epoch_order(experiment: Experiment):
  """`order(state, epoch) -> int32 [N]` ([K, N] for K seeds): epoch `epoch`'s permutation of the training
  rows, keyed by (data key, epoch), replicated. Computed once per epoch (a sort of N keys: run in every step
  it cost as much as a small step; docs/benchmarks.md) and passed to every step of the epoch."""
  num_train = experiment.info.num_train

  def order(state, epoch):
    _, data_key, _ = run_keys(state)
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_train).astype(jnp.int32)

  return jax.jit(per_seed(experiment, order, (0, None)), out_shardings=parallel.replicated(experiment.mesh))


def _gather_batches(experiment: Experiment, images, labels, chosen):
  """The rows `chosen` [K, B] of every seed as batches [K, B, ...] laid out as `seeds.layout` says.

  One gather of K * B rows (`parallel.gather_rows` splits its result by rows over the devices): taken
  batch-row-major ('batch': each device gets its share of every seed's batch, as a single run's split) or
  seed-major ('seeds': each device gets whole seeds, those its share of the state holds).
  """
  k, b = chosen.shape
  if seeds.layout(experiment.config, experiment.mesh.size) == 'seeds':
    flat_images, flat_labels = parallel.gather_rows(experiment.mesh, images, labels, chosen.reshape(-1))
    return flat_images.reshape((k, b) + flat_images.shape[1:]), flat_labels.reshape(k, b)
  flat_images, flat_labels = parallel.gather_rows(experiment.mesh, images, labels, chosen.T.reshape(-1))
  return (jnp.swapaxes(flat_images.reshape((b, k) + flat_images.shape[1:]), 0, 1),
          jnp.swapaxes(flat_labels.reshape(b, k), 0, 1))


def make_epoch_step(experiment: Experiment, *, with_rpat: Optional[bool] = None):
  """`step(state, train_images, train_labels, order) -> (state, metrics)`: selects the batch, then trains.

  The batch is chosen on the device from the step count: rows [index * B, (index + 1) * B) of the epoch's
  `order` (`epoch_order`; the last partial batch dropped), gathered from the row-sharded dataset
  (`parallel.gather_rows`). Nothing crosses from the host, and the batches are the same on any number
  of devices. with_rpat: as `steps.make_train_step` (the loop passes `steps.rpat_active` of the epoch).

  A K-seed run trains every seed in the one step (`per_seed`): each seed with its own state, key and
  order, all batches gathered at once (`_gather_batches`); metrics are [K]. With whole seeds per device
  (`seeds.layout` 'seeds') the step runs under `shard_map`, each device on its seeds' shards: left to
  sharding propagation, the CUDA compiler all-gathered tens of GB a step (docs/benchmarks.md).
  """
  config = experiment.config
  train_step = steps.make_train_step(config, experiment.forward, experiment.steps_per_epoch, with_rpat=with_rpat)
  batch_size, steps_per_epoch = config.batch_size, experiment.steps_per_epoch

  def chosen_rows(state, order):
    index = state.step % steps_per_epoch
    return jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)

  def seed_step(state, batch_images, batch_labels):
    step_key, _, _ = run_keys(state)
    return train_step(state, {'image': batch_images, 'label': batch_labels}, step_key)

  def step(state, images, labels, order):
    if not seeds.stacked(config):
      return seed_step(state, *parallel.gather_rows(experiment.mesh, images, labels, chosen_rows(state, order)))
    chosen = jax.vmap(chosen_rows)(state, order)
    every_seed = per_seed(experiment, seed_step)
    if seeds.layout(config, experiment.mesh.size) == 'seeds':  # Each device its own seeds: nothing to repartition.
      spec = jax.sharding.PartitionSpec(parallel.DATA_AXIS)
      every_seed = jax.shard_map(every_seed, mesh=experiment.mesh, in_specs=spec, out_specs=spec)
    return every_seed(state, *_gather_batches(experiment, images, labels, chosen))

  return step


def abstract_order(experiment: Experiment) -> jax.ShapeDtypeStruct:
  """The shape, dtype and sharding of `epoch_order`'s result."""
  leading = (seeds.count(experiment.config),) if seeds.stacked(experiment.config) else ()
  return jax.ShapeDtypeStruct(leading + (experiment.info.num_train,), jnp.int32,
                              sharding=parallel.replicated(experiment.mesh))


def jit_epoch_step(experiment: Experiment, *, with_rpat: Optional[bool] = None):
  """The epoch step under jit as a run compiles it: the state donated (and kept in its layout), metrics
  replicated."""
  return jax.jit(make_epoch_step(experiment, with_rpat=with_rpat), donate_argnums=0,
                 out_shardings=(experiment.state_sharding(), parallel.replicated(experiment.mesh)))


def compile_epoch_step(experiment: Experiment, state, images, labels, *, with_rpat: Optional[bool] = None):
  """The epoch step compiled for these arguments (arrays, or their `jax.ShapeDtypeStruct`s) and an order."""
  return jit_epoch_step(experiment, with_rpat=with_rpat).lower(state, images, labels,
                                                               abstract_order(experiment)).compile()


def jit_evaluate(experiment: Experiment):
  """`evaluate(state, images, labels, mask) -> sums` ([K] each for K seeds), the per-epoch clean and PGD-k
  evaluation, under jit."""
  evaluate = steps.make_evaluate(experiment.config, experiment.forward)
  one_seed = lambda s, i, l, m: evaluate(s, i, l, m, run_keys(s)[2])
  every_seed = per_seed(experiment, one_seed, (0, None, None, None))
  if seeds.layout(experiment.config, experiment.mesh.size) == 'seeds':
    # Each device its own seeds over the whole subset (gathered once: a few MB); left to sharding
    # propagation, the CUDA compiler all-gathered 22 GB for 8 seeds on 8 GPUs.
    seed_axis, whole = jax.sharding.PartitionSpec(parallel.DATA_AXIS), jax.sharding.PartitionSpec()
    every_seed = jax.shard_map(every_seed, mesh=experiment.mesh, in_specs=(seed_axis, whole, whole, whole),
                               out_specs=seed_axis)
  return jax.jit(every_seed, out_shardings=parallel.replicated(experiment.mesh))


def compile_evaluate(experiment: Experiment, state, eval_data):
  """The per-epoch evaluation compiled for these arguments."""
  return jit_evaluate(experiment).lower(state, *eval_data).compile()


class NonFiniteLossError(FloatingPointError):
  """A training metric became NaN or infinite; the message is one line naming the step and the terms."""


def _first_non_finite(host_metrics: List[Dict[str, Any]], first_step: int, seed_values: List[int]) -> Optional[str]:
  """'step N: loss, rpat_loss' (and 'of seed s, ...' in a K-seed run) for the first step with a non-finite
  metric, or None."""
  for offset, metrics in enumerate(host_metrics):
    bad = [key for key, value in metrics.items() if not np.all(np.isfinite(value))]
    if bad:
      where = ''
      if len(seed_values) > 1:
        finite = np.all([np.isfinite(metrics[key]) for key in bad], axis=0)
        where = ' of seed ' + ', '.join(str(seed) for seed, ok in zip(seed_values, finite) if not ok)
      return f'step {first_step + offset}{where}: {", ".join(sorted(bad))}'
  return None


def _mean_metrics(host_metrics: List[Dict[str, Any]]) -> Dict[str, np.ndarray]:
  """The epoch's mean of each metric (a float32 scalar, or [K] for K seeds), each seed's over a contiguous
  column: numpy sums a 1-D array pairwise, a 2-D one along axis 0 row by row, and the float32 results differ."""
  means = {}
  for key in host_metrics[0]:
    values = np.asarray([np.asarray(m[key], np.float32) for m in host_metrics])
    means[key] = (np.asarray(np.mean(values)) if values.ndim == 1 else
                  np.asarray([np.mean(np.ascontiguousarray(values[:, i])) for i in range(values.shape[1])]))
  return means


def seed_rows(config, row: Dict[str, Any]) -> List[Dict[str, Any]]:
  """A K-seed epoch's row as one row per seed ('seed' after 'epoch'); a single run's row as it is. Values
  with a seed axis become that seed's float; the rest repeat."""
  if not seeds.stacked(config):
    return [{key: float(value) if isinstance(value, np.ndarray) else value for key, value in row.items()}]
  rows = []
  for index, seed in enumerate(seeds.values(config)):
    one = {'epoch': row['epoch'], 'seed': seed}
    one.update({key: float(value[index]) if isinstance(value, np.ndarray) else value
                for key, value in row.items() if key != 'epoch'})
    rows.append(one)
  return rows


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike,
                       stop_signals: Optional[preemption.StopSignals] = None) -> steps.TrainState:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the final state.

  Raises (each with a one-line message): paths.PathError (workdir not writable or reachable),
  workdir_lock.WorkdirBusyError, saved_config.ConfigChangeError, checkpointing.CheckpointError (nothing
  readable to resume, or a save failed), NonFiniteLossError, and preemption.Preempted once a signal in
  `stop_signals` ended the run with a checkpoint of its last step.
  """
  workdir = paths.as_path(workdir)
  lock = None

  def take_workdir():
    nonlocal lock
    paths.make_dir(workdir)
    lock = workdir_lock.WorkdirLock(workdir)
    saved_config.check_resume(config, workdir)

  try:
    distributed.on_process_zero(take_workdir)
    return _train(config, workdir, stop_signals or preemption.StopSignals())
  finally:  # Also when the config check refused: the lock is not left held by this process.
    if lock is not None:
      lock.release()


@dataclasses.dataclass
class _Loop:
  """What the epochs share: the compiled steps, the data, the checkpoints and the stop/save triggers."""
  config: Any
  experiment: Experiment
  checkpoints: checkpointing.Checkpoints
  stop: preemption.StopSignals
  train_images: Any
  train_labels: Any
  order: Any  # epoch_order(experiment): (state, epoch) -> the epoch's permutation.
  last_save: float = 0.0

  def timed_save_due(self) -> bool:
    minutes = self.config.checkpoint.every_minutes
    return bool(minutes) and time.monotonic() - self.last_save >= 60 * minutes


def _train(config, workdir, stop) -> steps.TrainState:
  experiment = create_experiment(config)
  config, info = experiment.config, experiment.info
  state = experiment.init_state()
  steps_per_epoch = experiment.steps_per_epoch
  logging.info('%s: %d parameters%s, %d classes, %d train / %d test images, %d steps per epoch, %d devices '
               'in %d processes', config.model.name,
               sum(p.size for p in jax.tree.leaves(state.params)) // seeds.count(config),
               f' a seed, {seeds.count(config)} seeds' if seeds.stacked(config) else '', info.num_classes,
               info.num_train, info.num_test, steps_per_epoch, jax.device_count(), jax.process_count())

  if config.schedule.name == 'multistep' and any(m >= config.epochs for m in config.schedule.milestones):
    logging.warning('schedule.milestones %s: those >= epochs=%d are not reached in this run (they would be if '
                    'it is extended).', tuple(config.schedule.milestones), config.epochs)
  best = _BestPerSeed(config, experiment)
  checkpoints = checkpointing.Checkpoints(workdir, config.checkpoint.keep, best_keep=best.keep)
  meta = {'epoch': 0, **best.initial_meta()}
  resumed = checkpoints.restore_latest(state, steps_per_epoch)
  if resumed is not None:
    state, meta = resumed
    logging.info('Resumed from %s at step %d (epoch %d, step %d of %d).', workdir, seeds.step_of(state),
                 seeds.step_of(state) // steps_per_epoch + 1, seeds.step_of(state) % steps_per_epoch, steps_per_epoch)
    best.resume(checkpoints, state, meta)
  earlier = meta.pop('epoch_metrics', None)  # A mid-epoch checkpoint: the epoch's metrics so far.
  earlier_seconds = meta.pop('epoch_seconds', 0.0)
  meta.pop('step', None)
  if jax.process_index() == 0:  # The run is consistent: record (or extend) its config.
    saved_config.write(config, workdir)

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

  first_epoch = seeds.step_of(state) // steps_per_epoch
  if first_epoch < config.epochs:
    epoch_step_for(first_epoch)
  evaluate = compile_evaluate(experiment, state, eval_data)
  logging.info('Compiled the train step and the evaluation in %.1fs.', time.perf_counter() - compile_start)

  loop = _Loop(config, experiment, checkpoints, stop, train_images, train_labels, epoch_order(experiment),
               time.monotonic())
  log = metrics_log.MetricsLog(workdir, resume_epoch=meta['epoch'])
  try:
    with stop:
      for epoch in range(first_epoch, config.epochs):
        _stop_if_requested(loop, state)
        first_index = seeds.step_of(state) - epoch * steps_per_epoch
        row = _train_epoch(loop, epoch_step_for(epoch), state, epoch, first_index, earlier if first_index else None,
                           earlier_seconds if first_index else 0.0, meta)
        state = row.pop('state')
        if (epoch + 1) % config.eval.every_epochs == 0 or epoch + 1 == config.epochs:
          eval_start = time.perf_counter()
          sums = jax.device_get(evaluate(state, *eval_data))
          row['test_clean_acc'] = np.asarray(sums['clean_correct'] / sums['count'])
          row['test_pgd_acc'] = np.asarray(sums['pgd_correct'] / sums['count'])
          if config.ema.enabled:  # The weight average, evaluated the same way (same points, same key).
            sums = jax.device_get(evaluate(steps.averaged(state), *eval_data))
            row['test_ema_clean_acc'] = np.asarray(sums['clean_correct'] / sums['count'])
            row['test_ema_pgd_acc'] = np.asarray(sums['pgd_correct'] / sums['count'])
          row['eval_seconds'] = time.perf_counter() - eval_start
        is_best = best.update(meta, row.get('test_pgd_acc'), epoch + 1, state)
        meta['epoch'] = epoch + 1
        for seed_row in seed_rows(config, row):  # Before the checkpoint: a resume trims rows past the
          log.write(seed_row)                    # checkpoint it restores.
        checkpoints.save(epoch + 1, state, dict(meta), is_best, step=int(row['step']), best_state=best.state)
        loop.last_save = time.monotonic()
      _stop_if_requested(loop, state)
  except checkpointing.CheckpointSaveError:
    raise  # The managers are closed already; the earlier checkpoints are intact.
  except BaseException:
    checkpoints.close(quiet=True)  # Pending saves complete before the error leaves (a crash keeps them).
    raise
  finally:
    log.close()
  checkpoints.close()
  return state


class _BestPerSeed:
  """The best epoch by test PGD accuracy, per seed. A single run's best checkpoint is the state of its best
  epoch (meta: best_pgd_acc, best_epoch). In a K-seed run each seed has its own best epoch (meta: lists),
  so the best checkpoint is composed: slice i is seed i's best state, kept on the devices (`state`) and
  saved whenever a seed improves. `best/` then keeps two checkpoints, so that a resume from the epoch
  before a save that did not finish finds the composition its meta describes."""

  def __init__(self, config, experiment: Experiment):
    self.count = seeds.count(config) if seeds.stacked(config) else 0  # 0: a single run, no seed axis.
    self.keep = 2 if self.count else 1
    self.state = None
    sharding = experiment.state_sharding()
    self._mix = jax.jit(lambda best, state, improved: jax.tree.map(
        lambda b, s: jnp.where(improved.reshape((-1,) + (1,) * (s.ndim - 1)), s, b), best, state),
                        out_shardings=sharding)

  def initial_meta(self) -> Dict[str, Any]:
    if not self.count:
      return {'best_pgd_acc': -1.0, 'best_epoch': 0}
    return {'best_pgd_acc': [-1.0] * self.count, 'best_epoch': [0] * self.count}

  def resume(self, checkpoints: checkpointing.Checkpoints, state, meta) -> None:
    """The composed best state that the resumed checkpoint's meta describes (K seeds only)."""
    if not self.count or max(meta['best_epoch']) == 0:
      return
    epoch = max(meta['best_epoch'])
    try:
      self.state, _ = checkpoints.restore(state, which='best', epoch=epoch)
    except (FileNotFoundError, checkpointing.CheckpointError) as error:
      logging.warning('The best checkpoint of epoch %d cannot be read (%s): the best epoch of each seed is '
                      'chosen again from the next evaluation on.', epoch, error)
      meta.update(self.initial_meta())

  def update(self, meta, accuracy, epoch: int, state) -> bool:
    """Records `epoch` as the best of the seeds it improved (by test PGD accuracy `accuracy`, None when not
    evaluated); returns whether the best checkpoint changes."""
    if accuracy is None:
      return False
    if not self.count:
      improved = float(accuracy) > meta['best_pgd_acc']
      if improved:
        meta.update(best_pgd_acc=float(accuracy), best_epoch=epoch)
      return improved
    improved = accuracy > np.asarray(meta['best_pgd_acc'])
    if not improved.any():
      return False
    meta['best_pgd_acc'] = np.where(improved, accuracy, meta['best_pgd_acc']).tolist()
    meta['best_epoch'] = np.where(improved, epoch, meta['best_epoch']).astype(int).tolist()
    self.state = self._mix(state if self.state is None else self.state, state, improved)
    return True


def _stop_if_requested(loop: _Loop, state) -> None:
  """Raises Preempted if a signal came (on any process): the newest checkpoint already holds this step."""
  if distributed.any_process(loop.stop.requested()):
    _preempted(loop, state, None)


def _preempted(loop: _Loop, state, saved: Optional[str]) -> None:
  """Raises Preempted once the pending saves are complete; `saved`: where this step went, if just saved."""
  loop.checkpoints.wait()
  where = saved or f'the checkpoints in {loop.checkpoints.workdir}'
  raise preemption.Preempted(f'stopped by {loop.stop.name or "a signal on another process"} at step '
                             f'{seeds.step_of(state)}; saved in {where}; the same command resumes from there',
                             loop.stop.signum or 15)


def _save_partial(loop: _Loop, state, host_metrics, seconds: float, meta, *, stopping: bool) -> str:
  """Checkpoints the current mid-epoch step with the epoch's metrics so far (exact float32 values)."""
  partial_meta = dict(meta, step=seeds.step_of(state), epoch_seconds=seconds,
                      epoch_metrics=[{key: np.asarray(value).tolist() for key, value in m.items()} for m in host_metrics])
  with jax.transfer_guard('allow'):
    where = loop.checkpoints.save_partial(seeds.step_of(state), state, partial_meta, wait=stopping)
  loop.last_save = time.monotonic()
  logging.info('Saved step %d in %s.', seeds.step_of(state), where)
  return where


def _train_epoch(loop: _Loop, epoch_step, state, epoch: int, first_index: int, earlier, earlier_seconds: float,
                 meta) -> Dict[str, Any]:
  """Runs the epoch's steps from `first_index` (a resumed epoch: `earlier` holds the metrics of the steps
  before it). Metrics reach the host at progress updates, where they are checked for NaN/inf; a signal or
  a due timed checkpoint saves the exact step (and a signal then ends the run)."""
  config, steps_per_epoch = loop.config, loop.experiment.steps_per_epoch
  progress = metrics_log.Progress(config.log.progress, steps_per_epoch, config.batch_size, epoch + 1)
  start = time.perf_counter()
  first_step = epoch * steps_per_epoch + first_index + 1  # 1-based global step of step_metrics[0].
  step_metrics, host_metrics = [], [{key: np.asarray(value, np.float32) for key, value in m.items()} for m in earlier or []]
  several = jax.process_count() > 1
  order = loop.order(state, np.int32(epoch))  # Once per epoch, before the epoch's no-transfer block.

  def fetch_checked(upto: int):
    """Moves the metrics of steps [len(host), upto) of this session to the host and checks them."""
    done = len(host_metrics) - len(earlier or [])
    if upto <= done:
      return
    fetched = jax.device_get(step_metrics[done:upto])
    bad = _first_non_finite(fetched, first_step + done, seeds.values(config))
    if bad:
      raise NonFiniteLossError(f'non-finite training metrics at {bad} (epoch {epoch + 1}); the run stopped, '
                               f'its last good checkpoint and best/ are kept in {loop.checkpoints.workdir}')
    host_metrics.extend(fetched)

  with jax.transfer_guard('disallow'):  # Proves the epoch makes no implicit host<->device copy.
    for i in range(first_index, steps_per_epoch):
      state, metrics = epoch_step(state, loop.train_images, loop.train_labels, order)
      step_metrics.append(metrics)
      j = len(step_metrics)
      report = (i + 1) % config.log.every_steps == 0 and j >= 3
      if report:
        # Wait for a step two behind, so the device queue never runs dry while we report.
        fetch_checked(j - 2)
        progress.update(i - 1 - first_index, config.log.every_steps, host_metrics[-1] if host_metrics else None)
        loop.checkpoints.check()
      if i + 1 == steps_per_epoch or (several and not report):
        continue  # The epoch's end saves anyway; several processes agree only at progress updates.
      stopping = distributed.any_process(loop.stop.requested())
      if stopping or distributed.any_process(loop.timed_save_due()):
        fetch_checked(j)
        seconds = earlier_seconds + time.perf_counter() - start
        where = _save_partial(loop, state, host_metrics, seconds, meta, stopping=stopping)
        if stopping:
          _preempted(loop, state, where)
  fetch_checked(len(step_metrics))
  means = _mean_metrics(host_metrics)
  seconds = time.perf_counter() - start
  progress.close()
  row = {'epoch': epoch + 1, 'step': int((epoch + 1) * steps_per_epoch), 'lr': means.pop('lr'),
         'train_loss': means.pop('loss')}
  row.update({f'train_{key}': value for key, value in means.items()})
  row.update(epoch_seconds=earlier_seconds + seconds,
             images_per_second=len(step_metrics) * config.batch_size / seconds, state=state)
  return row
