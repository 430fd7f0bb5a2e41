"""Orbax checkpoints of the whole train state: the last N epochs, the best by test PGD accuracy, and the
newest mid-epoch step (a preemption or `checkpoint.every_minutes`).

Layout: `workdir/checkpoints/<epoch>/` (kept: the last `checkpoint.keep`), `workdir/best/<epoch>/` (kept: 1;
2 in a K-seed run, whose best is composed seed by seed: `train._BestPerSeed`)
and `workdir/partial/<step>/` (kept: 1, removed once an epoch checkpoint after it is complete). Each holds
`state` (params, BatchNorm statistics, optimiser state, step, run key) and `meta` (JSON: epoch, best
accuracy so far; a partial one also the epoch's per-step metrics so far, so a resumed epoch reports what
an uninterrupted one would).

What can go wrong, and what happens:
- Orbax writes to a temporary directory and renames it when complete, and deletes an old checkpoint only
  after its successor has committed: a killed run never leaves a half-written checkpoint a resume would
  take, nor loses the last good one.
- A checkpoint that cannot be read (a truncated or deleted file) is reported in one line, moved to
  `workdir/damaged/`, and the next older one is tried. If none can be read the resume stops with one line
  instead of starting afresh over them.
- A step trained again after such a fallback is saved over what `best/`, `checkpoints/` or `partial/` hold
  of it (deleted, then saved): the rule is the same for every store, and the run ends as an uninterrupted one.
- A save that fails (a full disk) raises `CheckpointSaveError` in one line with the space the state needs,
  at the next `check()` (the loop calls it at every progress update) or save; earlier checkpoints stay.
With several processes (jax.distributed) Orbax writes from process 0 and synchronises the others.
"""

import shutil
import time
from typing import Any, Dict, Optional, Tuple

import flax
import jax
import orbax.checkpoint as ocp
from absl import logging

from rpat_jax.sharding import distributed
from rpat_jax.run import paths


class CheckpointError(RuntimeError):
  """A checkpoint problem the run cannot continue past; the message is one line."""


class CheckpointSaveError(CheckpointError):
  """A save failed (e.g. the disk is full); the earlier checkpoints are intact."""


def _state_megabytes(state) -> float:
  return sum(getattr(leaf, 'nbytes', 0) for leaf in jax.tree.leaves(state)) / 2**20


def _free_megabytes(directory) -> Optional[float]:
  if paths.is_remote(directory):
    return None
  try:
    return shutil.disk_usage(str(directory)).free / 2**20
  except OSError:
    return None


class Checkpoints:
  """One helper around three `CheckpointManager`s; the training loop and the evaluation only call these.

  read_only: for an evaluation (nothing is created, a missing directory is an error, no partial manager).
  """

  def __init__(self, workdir: paths.PathLike, keep: int, *, read_only: bool = False, best_keep: int = 1):
    self.workdir = paths.as_path(workdir)
    self._state_megabytes = 0.0

    # Multi-host: process 0 writes, all wait at barriers named after the step. Managers that may save the
    # same step number each get their own barrier prefix (one shared name deadlocks the second save).
    def manager(name, max_to_keep, barrier):
      options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
          multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=barrier))
      return ocp.CheckpointManager(self.workdir / name, item_names=('state', 'meta'), options=options)

    if read_only:
      if not self.workdir.is_dir():
        raise FileNotFoundError(f'--workdir={self.workdir} does not exist')
      if not (self.workdir / 'checkpoints').is_dir():
        raise FileNotFoundError(f'--workdir={self.workdir} holds no checkpoints/ (is it a training run?)')
    self._last = manager('checkpoints', keep, 'rpat_last')
    self._best = manager('best', best_keep, 'rpat_best') if (not read_only or (self.workdir / 'best').is_dir()) else None
    self._partial = None if read_only else manager('partial', 1, 'rpat_partial')
    self._partial_cleanup_after: Optional[int] = None
    self._pending = set()  # Managers with a save whose outcome is not known yet.

  def _restore(self, manager, step: int, target_state) -> Tuple[Any, Dict[str, Any]]:
    target = flax.serialization.to_state_dict(target_state)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return flax.serialization.from_state_dict(target_state, restored['state']), dict(restored['meta'])

  def restore(self, target_state: Any, which: str = 'last', epoch: Optional[int] = None
              ) -> Tuple[Any, Dict[str, Any]]:
    """One checkpoint ('last' or 'best'; the newest, or `epoch`) into the structure, dtypes and shardings of
    `target_state`; returns (state, meta). For an evaluation: a problem raises, nothing is moved."""
    manager = self._last if which == 'last' else self._best
    if manager is None:
      raise FileNotFoundError(f'no {which} checkpoint in {self.workdir}')
    epoch = manager.latest_step() if epoch is None else epoch
    if epoch is None or epoch not in manager.all_steps():
      available = ', '.join(map(str, manager.all_steps())) or 'none'
      raise FileNotFoundError(f'no {which} checkpoint{"" if epoch is None else f" of epoch {epoch}"} in '
                              f'{self.workdir} (epochs there: {available})')
    try:
      return self._restore(manager, epoch, target_state)
    except Exception as error:  # pylint: disable=broad-except  # Orbax and TensorStore raise many kinds.
      raise CheckpointError(f'checkpoint {manager.directory / str(epoch)} cannot be read: '
                            f'{paths.describe_error(error)}') from None

  def restore_latest(self, target_state: Any, steps_per_epoch: int) -> Optional[Tuple[Any, Dict[str, Any]]]:
    """The newest readable checkpoint (epoch or partial, by global step) as (state, meta); None if there is
    none. Unreadable ones are reported, moved to `workdir/damaged/`, and skipped."""
    candidates = [(epoch * steps_per_epoch, self._last, epoch) for epoch in self._last.all_steps()]
    candidates += [(step, self._partial, step) for step in self._partial.all_steps()]
    damaged = []
    for _, manager, number in sorted(candidates, key=lambda item: item[0], reverse=True):
      try:
        state, meta = self._restore(manager, number, target_state)
      except Exception as error:  # pylint: disable=broad-except
        damaged.append((manager, number, paths.describe_error(error)))
        continue
      for bad_manager, bad_number, reason in damaged:
        self._set_aside(bad_manager, bad_number, reason)
      return state, meta
    if damaged:
      listed = '; '.join(f'{manager.directory / str(number)}: {reason}' for manager, number, reason in damaged)
      raise CheckpointError(f'no checkpoint in {self.workdir} can be read ({listed}); move them away to start '
                            'afresh')
    return None

  def _set_aside(self, manager, number: int, reason: str) -> None:
    source = manager.directory / str(number)
    target = self.workdir / 'damaged' / f'{manager.directory.name}-{number}-{int(time.time())}'
    if jax.process_index() == 0:
      paths.move(source, target)
    logging.warning('Checkpoint %s cannot be read (%s): skipped, moved to %s.', source, reason, target)
    distributed.barrier(f'rpat_set_aside_{manager.directory.name}_{number}')
    manager.reload()

  def save(self, epoch: int, state: Any, meta: Dict[str, Any], is_best: bool, *, step: Optional[int] = None,
           best_state: Any = None) -> None:
    """Saves epoch `epoch` (asynchronously); also as the best checkpoint when `is_best` (`best_state`
    there instead when given: a K-seed run's composition of each seed's best). The partial checkpoints at
    or before global `step` go once this save has committed."""
    self.check()
    args = self._args(state, meta)
    self._save(self._last, epoch, args)
    if is_best:
      self._save(self._best, epoch, args if best_state is None else self._args(best_state, meta))
    if step is not None:
      self._partial_cleanup_after = step

  def save_partial(self, step: int, state: Any, meta: Dict[str, Any], *, wait: bool) -> str:
    """Saves the mid-epoch global step `step`; waits for it to commit when `wait`. Returns its directory."""
    self.check()
    self._save(self._partial, step, self._args(state, meta))
    if wait:
      self.wait()
    return str(self._partial.directory / str(step))

  def _save(self, manager, number: int, args) -> None:
    try:
      if number in manager.all_steps():
        # A step trained again after a fallback to an older checkpoint (a damaged one set aside, a partial
        # save, a lost object) finds its first save there: the new one replaces it, in every store.
        manager.wait_until_finished()
        manager.delete(number)
      manager.save(number, args=args, force=True)  # Waits for the manager's previous save: raises if it failed.
    except Exception as error:  # pylint: disable=broad-except
      self._raise_save_error(manager, error)
    self._pending.add(manager)

  def _args(self, state, meta):
    self._state_megabytes = _state_megabytes(state)
    return ocp.args.Composite(state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                              meta=ocp.args.JsonSave(meta))

  def check(self) -> None:
    """Raises CheckpointSaveError if a background save failed (cheap: asks only finished saves); drops
    partial checkpoints that a committed epoch checkpoint has superseded."""
    for manager in list(self._pending):
      if not manager.is_saving_in_progress():
        self._finish(manager)
    if (self._partial_cleanup_after is not None and self._partial is not None
        and self._last not in self._pending):
      for step in self._partial.all_steps():
        if step <= self._partial_cleanup_after:
          self._partial.delete(step)
      self._partial_cleanup_after = None

  def _finish(self, manager) -> None:
    try:
      manager.wait_until_finished()  # Re-raises the background thread's error, if any.
      manager.check_for_errors()
    except Exception as error:  # pylint: disable=broad-except
      self._raise_save_error(manager, error)
    self._pending.discard(manager)

  def _raise_save_error(self, manager, error):
    free = _free_megabytes(self.workdir)
    space = f'; the state needs about {self._state_megabytes:.1f} MB' + (
        f', {free:.1f} MB are free there' if free is not None else '')
    self._abandon()
    raise CheckpointSaveError(f'saving a checkpoint in {manager.directory} failed: {paths.describe_error(error)}'
                              f'{space}. The earlier checkpoints are intact') from None

  def _abandon(self) -> None:
    """After a failed save: stops the managers' background work, so the process can exit quietly."""
    for manager in (self._last, self._best, self._partial):
      if manager is not None:
        try:
          manager.close()
        except Exception:  # pylint: disable=broad-except  # The failure is reported by the caller.
          pass
    self._pending.clear()

  def wait(self) -> None:
    """Waits for pending saves; raises CheckpointSaveError if one failed."""
    for manager in list(self._pending):
      self._finish(manager)
    self.check()

  def close(self, quiet: bool = False) -> None:
    """Waits for pending saves (raising if one failed, unless `quiet`: while another error leaves), then
    releases the managers."""
    try:
      self.wait()
    except CheckpointSaveError:
      if not quiet:
        raise
    finally:
      for manager in (self._last, self._best, self._partial):
        if manager is not None:
          manager.close()
