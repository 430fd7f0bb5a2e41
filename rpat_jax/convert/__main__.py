"""Converts weights between a PyTorch state_dict file and an Orbax directory of Flax variables.

  python -m rpat_jax.convert --model=preact_resnet18 --from_torch=model_best.pth --to=/ckpt/prn18
  python -m rpat_jax.convert --model=preact_resnet18 --from_flax=/ckpt/prn18 --to_torch=prn18.pt

Bad input gives one line, `rpat_jax.convert: error: ...`, and exit status 2.
"""

import functools
import os
import types

from absl import app
from absl import flags
from absl import logging

from rpat_jax.run import cli as cli_lib
from rpat_jax import convert

PROG = 'rpat_jax.convert'


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  """Defines the converter's flags on `flag_values`; returns their holders."""
  define = functools.partial(flags.DEFINE_string, flag_values=flag_values)
  return types.SimpleNamespace(
      model=define('model', None, f'Our model name: {", ".join(convert.TORCH_NAMES)}.'),
      layout=define('layout', None, 'PyTorch key layout (default: detected / the first listed).'),
      from_torch=define('from_torch', None, 'A PyTorch state_dict file (.pt / .pth / .model).'),
      to=define('to', None, 'Directory to create with an Orbax StandardSave of {params, batch_stats}.'),
      from_flax=define('from_flax', None, 'An Orbax directory written by --to, or a checkpoint `state`.'),
      to_torch=define('to_torch', None, 'The PyTorch state_dict file to write.'))


def _run(cli) -> None:
  model, layout = cli.model.value, cli.layout.value
  if not model:
    raise ValueError(f'--model is required; one of {", ".join(convert.TORCH_NAMES)}')
  convert.check_layout(model, layout)
  from_torch, to, from_flax, to_torch = cli.from_torch.value, cli.to.value, cli.from_flax.value, cli.to_torch.value
  if bool(from_torch) == bool(from_flax):
    raise ValueError('give exactly one of --from_torch (with --to) and --from_flax (with --to_torch)')
  if from_torch:
    if not to or to_torch:
      raise ValueError('--from_torch needs --to=DIR (and no --to_torch)')
    target = os.path.abspath(to)
    if os.path.exists(target):
      raise ValueError(f'--to={to} already exists; give a new directory')
    convert.save_variables(convert.torch_to_flax(convert.load_torch_file(from_torch), model, layout), target)
    print(f'wrote {target}')
  else:
    if not to_torch or to:
      raise ValueError('--from_flax needs --to_torch=FILE (and no --to)')
    if not os.path.isdir(from_flax):
      raise ValueError(f'--from_flax={from_flax} is not a directory')
    convert.save_torch_file(convert.flax_to_torch(convert.load_variables(from_flax), model, layout), to_torch)
    print(f'wrote {to_torch}')


def main(argv, cli) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a save at INFO.
  try:
    _run(cli)
  except (ValueError, RuntimeError, OSError) as error:
    cli_lib.fail(PROG, error)


if __name__ == '__main__':
  cli_lib.run_app(PROG, main, define_flags())
