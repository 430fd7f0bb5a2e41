"""Orbax checkpoints of the whole train state: the last N epochs, and the best by test PGD accuracy.

Layout: `workdir/checkpoints/<epoch>/` (kept: the last `checkpoint.keep`) and `workdir/best/<epoch>/`
(kept: 1). Each holds `state` (params, BatchNorm statistics, optimiser state, step, run key) and `meta`
(JSON: epoch, best accuracy so far, ...). Orbax writes to a temporary directory and renames it when
complete, so a killed run never leaves a half-written checkpoint that a resume would pick up. With
several processes (jax.distributed) Orbax writes from process 0 and synchronises the others.
"""

import os
from typing import Any, Dict, Optional, Tuple

import flax
import orbax.checkpoint as ocp


class Checkpoints:
  """One helper around two `CheckpointManager`s; the training loop only calls these methods."""

  def __init__(self, workdir: str, keep: int):
    workdir = os.path.abspath(workdir)
    # Multi-host: process 0 writes, all wait at barriers named after the step. Both managers save
    # step N, so each gets its own barrier prefix (one shared name deadlocks the second save).
    def options(max_to_keep, name):
      return ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))
    self._last = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state', 'meta'),
                                       options=options(keep, 'rpat_last'))
    self._best = ocp.CheckpointManager(os.path.join(workdir, 'best'), item_names=('state', 'meta'),
                                       options=options(1, 'rpat_best'))

  def latest_epoch(self) -> Optional[int]:
    return self._last.latest_step()

  def restore(self, target_state: Any, which: str = 'last', epoch: Optional[int] = None
              ) -> Tuple[Any, Dict[str, Any]]:
    """Restores into the structure, dtypes and shardings of `target_state`; returns (state, meta)."""
    manager = self._last if which == 'last' else self._best
    epoch = manager.latest_step() if epoch is None else epoch
    if epoch is None:
      raise FileNotFoundError(f'no {which} checkpoint in {manager.directory}')
    target = flax.serialization.to_state_dict(target_state)
    restored = manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return flax.serialization.from_state_dict(target_state, restored['state']), dict(restored['meta'])

  def save(self, epoch: int, state: Any, meta: Dict[str, Any], is_best: bool) -> None:
    """Saves epoch `epoch` (asynchronously); also as the best checkpoint when `is_best`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                              meta=ocp.args.JsonSave(meta))
    self._last.save(epoch, args=args)
    if is_best:
      self._best.save(epoch, args=args)

  def close(self) -> None:
    """Waits for pending asynchronous saves, then releases the managers."""
    for manager in (self._last, self._best):
      manager.wait_until_finished()
      manager.close()
