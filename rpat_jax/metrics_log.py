"""Where per-epoch metrics go: `workdir/metrics.jsonl`, TensorBoard events, and the log / progress bar.

Only process 0 writes files. A resumed run first drops JSONL rows of epochs after the checkpoint it
restored (a run killed between writing a row and finishing the checkpoint would otherwise repeat it).
"""

import json
import logging as std_logging
import os
import sys
import time
from typing import Any, Dict

import jax
from absl import logging


class _OwnInfoOnly(std_logging.Filter):
  """Keeps our INFO lines and everyone's warnings: Orbax and JAX log every save and backend probe at INFO."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or '/rpat_jax/' in record.pathname.replace('\\', '/')


def quiet_library_logs() -> None:
  """For the command-line tools: only rpat_jax logs at INFO."""
  logging.get_absl_handler().addFilter(_OwnInfoOnly())


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

  def __init__(self, workdir: str, resume_epoch: int):
    self._writes = jax.process_index() == 0
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not self._writes:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self._path):
      with open(self._path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)['epoch'] <= resume_epoch]
      with open(self._path, 'w') as f:
        f.writelines(rows)
    try:
      self._tb = _summary_writer()(os.path.join(workdir, 'tensorboard'))
    except ImportError:  # pragma: no cover
      logging.warning('tensorboardX is not installed: no TensorBoard events are written.')

  def write(self, row: Dict[str, Any]) -> None:
    logging.info('epoch %d: %s', row['epoch'],
                 ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()
                           if k != 'epoch'))
    if not self._writes:
      return
    with open(self._path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    if self._tb is not None:
      for key, value in row.items():
        if key not in ('epoch', 'step') and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, row['step'])
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


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

  def update(self, done: int, steps: int) -> None:
    """`done` steps of the epoch have completed on the device; `steps` since the last update."""
    elapsed = time.perf_counter() - self._start
    rate = done * self._images / max(elapsed, 1e-9)
    if self._bar is not None:
      self._bar.update(steps)
      self._bar.set_postfix_str(f'{rate:.0f} img/s')
    elif self._mode == 'lines':
      eta = elapsed / max(done, 1) * (self._total - done)
      logging.info('epoch %d: step %d/%d, %.0f img/s, ETA %.0fs', self._epoch, done, self._total, rate, eta)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
