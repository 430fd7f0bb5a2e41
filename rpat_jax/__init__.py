"""rpat_jax: Robust Perception Adversarial Training (RPAT) in JAX/Flax.

The science is at the top level (main, train, experiment, methods, steps, forward, objectives, attacks,
optim); config/, run/, sharding/ and cpu/ hold what is not; data/, models/, autoattack/ and the binaries'
packages (evaluate, perception, report, convert, bench) sit beside them.
"""

from rpat_jax.cpu import xla_flags as _xla_flags

# Before JAX starts its CPU backend (it reads XLA_FLAGS then), and only where the CPU is expected to be
# the default backend: XLA's own convolutions, faster there (cpu/xla_flags.py).
_xla_flags.prefer_eigen_convolutions()

# Modules that moved into the subpackages, old name -> new home: `from rpat_jax import defaults` in a
# config file written for the old layout still works, with one warning line naming the new place.
_MOVED_MODULES = {
    'defaults': 'config.defaults', 'config_validation': 'config.validation', 'threats': 'config.threats',
    'checkpointing': 'run.checkpointing', 'run_config': 'run.saved_config', 'metrics_log': 'run.metrics_log',
    'workdir_lock': 'run.workdir_lock', 'preemption': 'run.preemption', 'paths': 'run.paths', 'cli': 'run.cli',
    'parallel': 'sharding.parallel', 'distributed': 'sharding.distributed',
}


def __getattr__(name):
  if name not in _MOVED_MODULES:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  import importlib  # pylint: disable=import-outside-toplevel
  import warnings  # pylint: disable=import-outside-toplevel
  new = f'{__name__}.{_MOVED_MODULES[name]}'
  warnings.warn(f'rpat_jax.{name} is now {new}', DeprecationWarning, stacklevel=2)
  return importlib.import_module(new)
