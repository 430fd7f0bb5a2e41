"""A run's `config.json`: written once the run is known to be consistent, and compared on every resume.

Keys that change the meaning of the steps already taken (model, method, data, attack, rpat, optimiser,
schedule, batch size, seed, ...) must equal the recorded ones; a change is refused in one line naming
each key with both values. `RESUMABLE_CHANGES` may change: extending `epochs`, the evaluation, logging and
checkpoint cadence, where the data lives, and the same computation written or laid out otherwise (`attack.unroll`,
a K-seed run's `seed_sharding` and `seed_compute`).
"""

import json
from typing import Any, Dict, List

import ml_collections

from rpat_jax.config import defaults
from rpat_jax.run import paths

FILE = 'config.json'
RESUMABLE_CHANGES = ('epochs', 'eval', 'log', 'checkpoint', 'data.data_dir', 'attack.unroll', 'seed_sharding',
                     'seed_compute')


class ConfigChangeError(ValueError):
  """A resume with a config whose meaning differs from the run's; the message is one line."""


def flatten(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  """{'attack': {'eps': e}} -> {'attack.eps': e}: a config's keys as the command line names them."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


def as_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def _resumable(key: str) -> bool:
  return any(key == allowed or key.startswith(allowed + '.') for allowed in RESUMABLE_CHANGES)


def changed_keys(recorded: Dict[str, Any], config: ml_collections.ConfigDict) -> List[str]:
  """'key: recorded -> now' for each key whose change would alter the run's meaning."""
  now = flatten(json.loads(as_json(config)))  # The same JSON round trip as the file: tuples become lists.
  before = flatten(recorded)
  missing = object()
  changes = []
  for key in sorted(set(now) | set(before)):
    old, new = before.get(key, missing), now.get(key, missing)
    if old != new and not _resumable(key):
      show = lambda value: '(absent)' if value is missing else json.dumps(value)
      changes.append(f'{key}: {show(old)} -> {show(new)}')
  return changes


def _load(path, remedy: str) -> Dict[str, Any]:
  try:
    recorded = json.loads(path.read_text())
    if not isinstance(recorded, dict):
      raise ValueError('not a JSON object')
    recorded = defaults.upgrade_recorded(recorded)  # Written before a key moved: read with today's names.
  except Exception as error:  # pylint: disable=broad-except
    raise ConfigChangeError(f'{path} cannot be read ({paths.describe_error(error)}); {remedy}') from None
  return recorded


def check_resume(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> bool:
  """Raises ConfigChangeError if `workdir/config.json` records a run this config would change; returns
  whether the file exists. A file that cannot be read is refused too: it is the run's only record."""
  path = paths.as_path(workdir) / FILE
  if not path.exists():
    return False
  changes = changed_keys(_load(path, "it records the run's config: restore it, or use another workdir"), config)
  if changes:
    raise ConfigChangeError(f'the config differs from the run in {paths.as_path(workdir)} in keys that change what '
                            f'was trained: {"; ".join(changes)}. Resume with the recorded values, or use another '
                            f'workdir (may change: {", ".join(RESUMABLE_CHANGES)})')
  return True


def read(workdir: paths.PathLike) -> ml_collections.ConfigDict:
  """The config a run recorded (its `config.json`), for tools that act on the run (evaluation, reports)."""
  path = paths.as_path(workdir) / FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist (is --workdir a training run?); give --config')
  return ml_collections.ConfigDict(_load(path, 'give --config'))


def check_seeds(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> None:
  """Raises ConfigChangeError if a config given to a tool names other seeds than the K-seed run in `workdir`
  trained, or K seeds for a single run (the checkpoint's seed axis, and the seeds its results are filed
  under, follow from them; a single run's seed changes neither)."""
  path = paths.as_path(workdir) / FILE
  if not path.exists():
    return
  recorded = _load(path, "it records the run's config: restore it, or give --config without --workdir's run")
  trained = {key: recorded.get(key, default) for key, default in (('seed', 0), ('seeds', 1))}
  given = {key: config.get(key, default) for key, default in (('seed', 0), ('seeds', 1))}
  if trained != given and (trained['seeds'] > 1 or given['seeds'] > 1):
    show = lambda values: ', '.join(f'{key}={value}' for key, value in values.items())
    raise ConfigChangeError(f'--config has {show(given)} but the run in {paths.as_path(workdir)} trained '
                            f'{show(trained)} (its config.json): give those values, or leave --config out')


def write(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> None:
  paths.write_atomic(paths.as_path(workdir) / FILE, as_json(config))
