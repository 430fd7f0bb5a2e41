"""Where per-epoch metrics go: `workdir/metrics.jsonl`, TensorBoard events, and the log / progress bar.

Only process 0 writes files. A resumed run first drops JSONL rows of epochs after the checkpoint it
restored (a run killed between writing a row and finishing the checkpoint would otherwise repeat it).
`metrics.jsonl` is rewritten whole, atomically, after each epoch (object stores cannot append; the file
is small). TensorBoard events go where tensorboardX can write: a local workdir, or gs:// / s3:// with its
cloud clients installed; elsewhere a warning says there are none.
"""

import json
import logging as std_logging
import sys
import time
from typing import Any, Dict, Optional

import jax
import numpy as np
from absl import logging

from rpat_jax.run import paths

FILE = 'metrics.jsonl'  # One JSON object per epoch (per epoch and seed in a K-seed run: its 'seed' key).


class _OwnInfoOnly(std_logging.Filter):
  """Keeps our INFO lines and everyone's warnings: Orbax and JAX log every save and backend probe at INFO.

  Orbax's own errors (and asyncio's, from its reads of a damaged checkpoint) are dropped too: each one is a
  failed save or read that `checkpointing` reports in one line with what to do, instead of a traceback.
  """

  def filter(self, record):
    path = record.pathname.replace('\\', '/')
    if record.name == 'asyncio' or ('/orbax/' in path and record.levelno < std_logging.CRITICAL):
      return False
    return record.levelno >= std_logging.WARNING or '/rpat_jax/' in path


def _closed_loop_error(exc_type, value) -> bool:
  return exc_type is RuntimeError and str(value) == 'Event loop is closed'


def quiet_library_logs() -> None:
  """For the command-line tools: only rpat_jax logs at INFO. After a failed asynchronous checkpoint write,
  TensorStore's remaining write callbacks report 'Event loop is closed' as unraisable errors (tracebacks
  on stderr); they say nothing the one-line report does not, so they are dropped."""
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  previous = sys.unraisablehook

  def unraisablehook(unraisable):
    if not _closed_loop_error(unraisable.exc_type, unraisable.exc_value):
      previous(unraisable)

  sys.unraisablehook = unraisablehook


def _summary_writer():
  """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch (1-3 s) only to accept
  torch tensors, and we write floats. A torch imported before stays; one imported later loads as usual."""
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError, which tensorboardX handles.
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    del sys.modules['torch']
  return SummaryWriter


class MetricsLog:

  def __init__(self, workdir: paths.PathLike, resume_epoch: int):
    self._writes = jax.process_index() == 0
    workdir = paths.as_path(workdir)
    self._path = workdir / FILE
    self._tb_class = None  # tensorboardX's SummaryWriter where events are written.
    self._tb_dir = str(workdir / 'tensorboard')
    self._writers = {}  # seed (None: the run's) -> its writer, made at its first row.
    self._rows = []
    if not self._writes:
      return
    if self._path.exists():
      self._rows = [line for line in self._path.read_text().splitlines()
                    if line.strip() and json.loads(line)['epoch'] <= resume_epoch]
      paths.write_atomic(self._path, ''.join(row + '\n' for row in self._rows))
    if paths.is_remote(workdir) and not str(workdir).startswith(('gs://', 's3://')):
      logging.warning('TensorBoard events are not written to %s (tensorboardX writes locally, gs:// or s3://).',
                      workdir)
      return
    try:
      self._tb_class = _summary_writer()
    except ImportError as error:  # pragma: no cover
      logging.warning('No TensorBoard events are written: %s', paths.describe_error(error))

  def write(self, row: Dict[str, Any]) -> None:
    logging.info('epoch %d: %s', row['epoch'],
                 ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()
                           if k != 'epoch'))
    if not self._writes:
      return
    self._rows.append(json.dumps(row))
    paths.write_atomic(self._path, ''.join(line + '\n' for line in self._rows))
    if self._tb_class is not None:
      writer = self._writer(row.get('seed'))
      for key, value in row.items():
        if key not in ('epoch', 'step', 'seed') and isinstance(value, (int, float)):
          writer.add_scalar(key, value, row['step'])
      writer.flush()

  def _writer(self, seed):
    """The events writer of a row, made at its first row: the run's (`tensorboard/`), or for a K-seed run's
    row its seed's (`tensorboard/seed_<s>`, so TensorBoard draws the seeds as runs side by side, and no empty
    run of the whole)."""
    if seed not in self._writers:
      self._writers[seed] = self._tb_class(self._tb_dir if seed is None else f'{self._tb_dir}/seed_{seed}')
    return self._writers[seed]

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()


def seed_ranges(metrics: Optional[Dict[str, Any]]) -> str:
  """', K seeds: loss 1.52-1.61, acc 28.1-31.0%' for per-seed metrics; '' for a single run's."""
  if not metrics or np.ndim(metrics.get('loss', 0.0)) == 0:
    return ''
  loss, acc = np.asarray(metrics['loss']), 100 * np.asarray(metrics.get('acc', np.nan))
  return (f', {loss.size} seeds: loss {loss.min():.3g}-{loss.max():.3g}, acc {acc.min():.1f}-{acc.max():.1f}%')


class Progress:
  """A tqdm bar (on a terminal) or plain log lines, updated every few steps with img/s and ETA."""

  def __init__(self, mode: str, total_steps: int, images_per_step: int, epoch: int):
    if mode == 'auto':
      mode = 'bar' if sys.stderr.isatty() else 'lines'
    self._mode = mode if jax.process_index() == 0 else 'none'
    self._total, self._images, self._epoch = total_steps, images_per_step, epoch
    self._start = time.perf_counter()
    self._bar = None
    if self._mode == 'bar':
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, desc=f'epoch {epoch}', unit='step', leave=False, dynamic_ncols=True)

  def update(self, done: int, steps: int, metrics: Optional[Dict[str, Any]] = None) -> None:
    """`done` steps of the epoch have completed on the device; `steps` since the last update. metrics: a
    recent step's host metrics; a K-seed run's ([K] each) show as the seeds' range of loss and accuracy."""
    elapsed = time.perf_counter() - self._start
    rate = done * self._images / max(elapsed, 1e-9)
    seeds = seed_ranges(metrics)
    if self._bar is not None:
      self._bar.update(steps)
      self._bar.set_postfix_str(f'{rate:.0f} img/s' + seeds)
    elif self._mode == 'lines':
      eta = elapsed / max(done, 1) * (self._total - done)
      logging.info('epoch %d: step %d/%d, %.0f img/s, ETA %.0fs%s', self._epoch, done, self._total, rate, eta, seeds)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
