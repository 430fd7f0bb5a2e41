"""What the command-line tools share: bad input is one line and exit status 2, before anything compiles.

`run_app` parses the flags itself, so a config file that does not exist, an unknown config word or key, a
value of the wrong type or an unknown flag becomes `<prog>: error: <flag>: <what is wrong>` instead of an
absl or ml_collections traceback. `fail` prints such a line for the errors the tools raise later.
"""

import functools
import os
import re
import sys
from typing import Callable, List, NoReturn, Optional, Sequence

from absl import app
from absl import flags

from rpat_jax.config import defaults


def _last_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  return re.sub(r'^\w+(Error|Exception): ', '', lines[-1]) if lines else type(error).__name__


def last_line(error: BaseException) -> str:
  """An error's message as one line (its last), without a leading 'SomethingError: '."""
  return _last_line(error)


def _flag_of(argv: Sequence[str], needle: str) -> str:
  """The command-line argument that mentions `needle` (a key or a path), for the message."""
  for argument in argv[1:]:
    if needle and needle in argument:
      return argument
  return ''


def parse_error_message(argv: Sequence[str], error: BaseException) -> str:
  """One line for an error raised while parsing `argv` (flags.FlagValues.__call__)."""
  text = str(error)
  if isinstance(error, flags.Error):  # absl's own messages are one line already (unknown flag, bad int, ...).
    return _last_line(error)
  if isinstance(error, (AttributeError, KeyError)):  # --config.<key>=... naming a key the config lacks.
    detail = error.args[0] if error.args else error
    while isinstance(detail, BaseException) and detail.args:  # AttributeError(KeyError('...')).
      detail = detail.args[0]
    first, *hints = str(detail).strip().splitlines() or ['']
    key = first.strip('"\' \\')
    argument = _flag_of(argv, f'.{key}=') or _flag_of(argv, key)
    hint = f' ({hints[0].strip()})' if hints else ''
    dotted = re.match(r'--config\.([\w.]+)', argument or '')
    if dotted and dotted.group(1) in defaults.MOVED_KEYS:
      return f'{argument}: {defaults.moved_key_message(dotted.group(1))}'
    return (f'{argument or "--config.*"}: the config has no key {key!r}{hint}; every key is listed in '
            'rpat_jax/config/defaults.py')
  missing = re.search(r'No such file or directory: \'([^\']+)\'', text)
  if missing:
    argument = _flag_of(argv, missing.group(1))
    return f'{argument or missing.group(1)}: no such config file'
  argument = _flag_of(argv, '--config=')  # Anything else came from loading or running the config file.
  return f'{argument + ": " if argument else ""}{_last_line(error)}'


def fail(prog: str, error, status: int = 2, label: str = 'error', *, abandon_threads: bool = False) -> NoReturn:
  """Prints `prog: label: <one line>` and exits with `status`. abandon_threads: exit without waiting for
  other threads (after a failed checkpoint save, Orbax's wait for signals that never come)."""
  print(f'{prog}: {label}: {error if isinstance(error, str) else _last_line(error)}', file=sys.stderr)
  if abandon_threads:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)


def int_list(flag: str, values: Optional[Sequence[str]]) -> Optional[List[int]]:
  """A list flag's values as distinct integers (None where it is not given); ValueError naming the flag."""
  if not values:
    return None
  shown = f'{flag}={",".join(values)}'
  try:
    numbers = [int(value) for value in values]
  except ValueError:
    raise ValueError(f'{shown}; allowed: integers, e.g. {flag}=1,3') from None
  if len(set(numbers)) != len(numbers):
    raise ValueError(f'{shown}: a value given twice')
  return numbers


def parse_flags(prog: str, argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS):
  """flag_values(argv), with any error (also one loading a --config file) as one line and exit status 2."""
  try:
    remaining = flag_values(argv)
    if 'config' in flag_values and flag_values['config'].value is not None:
      flag_values['config'].value.to_dict()  # ml_collections defers a config file's load error to first use.
    return remaining
  except Exception as error:  # pylint: disable=broad-except  # Config files raise anything they like.
    while error.__cause__ is not None:
      error = error.__cause__
    fail(prog, parse_error_message(argv, error))


def run_app(prog: str, main: Callable, cli, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """`absl.app.run(main(argv, cli=cli))` with flag parsing errors as one line and exit status 2."""
  app.run(functools.partial(main, cli=cli), flags_parser=functools.partial(parse_flags, prog,
                                                                          flag_values=flag_values))
