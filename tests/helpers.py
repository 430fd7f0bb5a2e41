"""What tests share: the repository root, a tiny version of the smoke config, XLA's optimisations on for
a block, a run's metric rows without timings, and a hook before each compiled epoch step. The session's
set-up (compilation settings, scheduling) is conftest.py's."""

import contextlib
import json
import os
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `configs` is imported as a package from the repository root.
  sys.path.insert(0, ROOT)

from configs import smoke  # noqa: E402
from rpat_jax.config import threats  # noqa: E402
from rpat_jax import train  # noqa: E402

TIMING = ('epoch_seconds', 'images_per_second', 'eval_seconds')  # Metrics that differ between equal runs.


def _optimize(on: bool) -> None:
  jax.config.update('jax_disable_most_optimizations', not on)
  os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '0' if on else '1'  # For the processes a test starts.


@contextlib.contextmanager
def xla_optimized():
  """XLA's optimisations on inside the block: for the part of a test that runs attack loops (AutoAttack),
  where unoptimised programs run several times slower."""
  if os.environ.get('JAX_DISABLE_MOST_OPTIMIZATIONS') != '1':  # Already on.
    yield
    return
  _optimize(True)
  try:
    yield
  finally:
    _optimize(False)


def tiny_config(**overrides):
  """A small CNN (width 8) on 16x16 synthetic images: 4 steps of 64 per epoch, PGD-2."""
  config = smoke.get_config()
  config.model.width = 8
  config.data.synthetic.num_train = 256
  config.data.synthetic.num_test = 64
  config.data.synthetic.image_size = 16
  config.batch_size = 64
  config.epochs = 2
  config.attack.steps = 2
  config.eval.batch_size = 32
  config.eval.pgd_steps = 2
  config.log.progress = 'none'
  config = threats.resolve(config)
  config.update_from_flattened_dict(overrides)
  return config


def metric_rows(workdir):
  """`workdir/metrics.jsonl`'s rows without the timings: what equal runs share."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def wrap_steps(monkeypatch, before_step):
  """Every compiled epoch step calls `before_step(n)` before its n-th call (n counts from 1 per run)."""
  real = train.compile_epoch_step
  calls = [0]

  def compile_epoch_step(*args, **kwargs):
    step = real(*args, **kwargs)

    def wrapped(*inputs):
      calls[0] += 1
      before_step(calls[0])
      return step(*inputs)
    return wrapped

  monkeypatch.setattr(train, 'compile_epoch_step', compile_epoch_step)
  return calls


def one_line_error(binary, argv, monkeypatch, capsys) -> str:
  """Runs a binary's `main` (`define_flags` and `main` of its __main__ module) on argv; asserts it exits
  with status 2 and one line on stderr, and returns that line."""
  import pytest  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  flag_values = flags.FlagValues()
  holders = binary.define_flags(flag_values)
  monkeypatch.setattr(sys, 'argv', argv)
  flag_values(argv)
  with pytest.raises(SystemExit) as exit_info:
    binary.main([argv[0]], holders)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  return lines[0]
