"""Threat models: the one place that holds the per-norm default budgets.

The official RPAT_Benchmarks CLI keeps Linf defaults even when `--distance L2` is passed (docs/fidelity.md,
"Methods"); here an unset `attack.eps` / `attack.step_size` is filled from the norm, so choosing the norm
alone gives the right budget.
"""

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class Threat:
  eps: float  # Radius, in [0, 1] pixel-range units.
  step_size: float  # PGD step, same units.


DEFAULT_THREATS = {
    'linf': Threat(eps=8 / 255, step_size=2 / 255),
    'l2': Threat(eps=128 / 255, step_size=15 / 255),
}
NORMS = tuple(DEFAULT_THREATS)


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns a copy of `config` with `attack.norm` lower-cased and eps / step_size filled in."""
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy; the flag's config stays as given.
  norm = str(config.attack.norm).lower()
  config.attack.norm = norm
  if norm in DEFAULT_THREATS:
    if config.attack.eps is None:
      config.attack.eps = DEFAULT_THREATS[norm].eps
    if config.attack.step_size is None:
      config.attack.step_size = DEFAULT_THREATS[norm].step_size
  return config
