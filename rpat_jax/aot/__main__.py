"""Compiles a run's programs for TPU slices and GPU hosts without running them; prints a table, writes JSON.

  python -m rpat_jax.aot --config=configs/wrn.py --target=v5e:4x4 --out=wrn_v5e.json
  python -m rpat_jax.aot --config=configs/prn18.py:rpat_plus_plus --target=v5e:2x2,h100x8 \
      --programs=train_step --config.model.dtype=float32

Needs the compile-only back ends (`pip install -r requirements-aot.txt`). Bad input (an unknown target, a
missing back end, a batch the devices do not divide) is one line and exit status 2; a program that does not
fit the device is one line with both byte counts, the other programs go on, and the exit status is 1.
"""

import json
import os
import subprocess
import sys
import tempfile
import types
from typing import Dict, Optional

from rpat_jax import aot as _aot  # Sets JAX_PLATFORMS before JAX starts.

import jax  # pylint: disable=wrong-import-order
from absl import flags
from ml_collections import config_flags

from rpat_jax.aot import analysis
from rpat_jax.aot import programs as programs_lib
from rpat_jax.aot import search
from rpat_jax.aot import table
from rpat_jax.aot import targets
from rpat_jax.config import threats
from rpat_jax.config import validation
from rpat_jax.run import cli as cli_lib
from rpat_jax.run import paths
from rpat_jax.sharding import devices
from rpat_jax.sharding import parallel

del _aot
PROG = 'rpat_jax.aot'
NAMES = ('train_step', 'train_step_before_rpat', 'evaluate', 'pgd20_step', 'apgd_ce_step', 'apgd_t_step', 'gradient',
         'apgd_ce_step_weights_as_arguments')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  values = dict(flag_values=flag_values)
  return types.SimpleNamespace(
      config=config_flags.DEFINE_config_file('config', None, 'The run\'s config file.', lock_config=False,
                                             **values),
      target=flags.DEFINE_list('target', None, f'Targets, comma-separated: {targets.EXAMPLES}.', **values),
      out=flags.DEFINE_string('out', None, 'Write the rows as JSON here (and the table beside it, .md).', **values),
      programs=flags.DEFINE_list('programs', None, f'Only these programs (default: all): {", ".join(NAMES)}.',
                                 **values),
      search=flags.DEFINE_list('search', ['train_step'], 'Programs whose largest fitting per-device batch is '
                               'searched (a few compiles each); "none" for none.', **values),
      eval_batch_size=flags.DEFINE_integer('eval_batch_size', 500, 'The evaluation\'s points per attack call '
                                           '(`rpat_jax.evaluate --batch_size`).', **values),
      weights_as_arguments=flags.DEFINE_bool('weights_as_arguments', False, 'Also compile APGD-CE\'s iteration '
                                             'with the weights as arguments (hoisted_jit\'s form).', **values),
      cache_dir=flags.DEFINE_string('cache_dir', os.path.expanduser('~/.cache/rpat_jax/aot'),
                                    'Persistent compilation cache ("" for none).', **values))


def _check(cli) -> None:
  """Usage errors, before any compile."""
  if not cli.target.value:
    raise validation.ConfigError(f'--target is required; allowed: {targets.EXAMPLES}')
  for name in cli.target.value:
    targets.parse(name)
  for name in (cli.programs.value or []) + [n for n in cli.search.value if n != 'none']:
    validation.choice('--programs/--search', name, NAMES)
  validation.require(cli.eval_batch_size.value >= 1, f'--eval_batch_size={cli.eval_batch_size.value} must be >= 1')


def _gib(value: int) -> str:
  return f'{value / 2**30:.2f} GiB ({value} bytes)'


def pod_plan(experiment) -> Dict:
  """What each process of the target reads of the training set (`parallel.rows_held_by`, as a pod run's
  processes each call it for themselves)."""
  rows, sharding = experiment.train_layout()
  processes = len({device.process_index for device in experiment.mesh.devices.flat})
  held = [parallel.rows_held_by(rows, sharding, process) for process in range(processes)]
  union = set().union(*[set(h.tolist()) for h in held])
  return {'processes': processes, 'rows_per_process': [len(h) for h in held],
          'every_row_read_once': sum(len(h) for h in held) == len(union) == experiment.info.num_train}


def one_compile_estimate(row: Dict, usable: int) -> Optional[int]:
  """The largest per-device batch from one compile, taking the temporaries as proportional to the batch and
  the rest (state, dataset, code) as fixed: what `--search` then confirms with compiles. None without
  temporaries to scale."""
  parts = row['bytes']
  fixed = row['bytes_per_device'] - parts['temporaries']
  per_image = parts['temporaries'] / row['images_per_device']
  return int((usable - fixed) // per_image) if per_image > 0 else None


def _row_for(config, name: str, target: targets.Target, *, batch: Optional[int] = None, kind: str = '',
             eval_batch_size: int, weights_as_arguments: bool) -> Dict:
  """One program's row, at `batch` images per device of its kind when given."""
  config = config.copy_and_resolve_references()
  count = target.chips
  if batch is not None and kind == programs_lib.TRAIN:
    config.batch_size = batch * count
  if batch is not None and kind == programs_lib.EVAL:
    eval_batch_size = batch * count
  _, found = programs_lib.all_programs(config, eval_batch_size=eval_batch_size, only=[name],
                                       weights_as_arguments=weights_as_arguments)
  program = found[0]
  return analysis.analyse(program.lower(), images=program.images, devices=count, chip=target.chip,
                          usable_bytes=target.usable_bytes)


def run_target(config, target: targets.Target, cli) -> Dict:
  """Every program's row on `target` (cli: the flags' holders)."""
  name = target.name
  target_devices = target.devices()
  options = dict(eval_batch_size=cli.eval_batch_size.value, weights_as_arguments=cli.weights_as_arguments.value)
  result = {'target': name, 'platform': target.platform, 'chip': target.chip.kind, 'chips': target.chips,
            'device_bytes': target.usable_bytes, 'peak_bf16_flops': target.chip.peak_bf16_flops,
            'hbm_bytes_per_s': target.chip.hbm_bytes_per_s, 'programs': {}}
  # The CUDA plugin's compile-only client cannot read back what it writes to the persistent cache.
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', cache and target.platform != 'gpu')
  try:
    with devices.building_for(target_devices):
      return _rows(config, target, result, cli, options)
  finally:
    jax.config.update('jax_enable_compilation_cache', cache)


def _rows(config, target: targets.Target, result: Dict, cli, options) -> Dict:
  """Compiles every program over the current (the target's) devices and adds its row to `result`."""
  name = target.name
  experiment, found = programs_lib.all_programs(config, only=cli.programs.value, **options)
  result['pod'] = pod_plan(experiment)
  for program in found:
    try:
      row = analysis.analyse(program.lower(), images=program.images, devices=target.chips, chip=target.chip,
                             usable_bytes=target.usable_bytes)
    except Exception as error:  # pylint: disable=broad-except
      line = cli_lib.last_line(error)
      print(f'{PROG}: {program.name} on {name}: did not compile: {line}', file=sys.stderr)
      result['programs'][program.name] = {'error': line}
      continue
    row['note'] = program.note
    if not program.counted:
      row.pop('estimate', None)
      row.pop('flops_per_image', None)
    per_device = row['images_per_device']
    if row['fits'] and 'bytes' in row and program.counted:
      row['largest_batch_estimate'] = one_compile_estimate(row, target.usable_bytes)
    if program.name.startswith('train_step') and 'estimate' in row:
      row['estimate']['epoch_seconds'] = experiment.steps_per_epoch * row['estimate']['step_seconds']
    if not row['fits']:
      what = 'its temporaries alone need' if row.get('refused') else 'needs'
      print(f'{PROG}: does not fit: {program.name} on {name} at {per_device:g} images per device {what} '
            f'{_gib(row["bytes_per_device"])} per device; the device has {_gib(row["device_bytes"])}',
            file=sys.stderr)
    if program.name in cli.search.value and per_device == int(per_device):
      limit = (experiment.info.num_train if program.kind == programs_lib.TRAIN else experiment.info.num_test)
      searched = {int(per_device): row}

      def measure(batch, p=program):
        searched[batch] = _row_for(config, p.name, target, batch=batch, kind=p.kind, **options)
        return searched[batch]['bytes_per_device']

      row['largest_batch'] = search.largest_batch(measure, target.usable_bytes,
                                                  (int(per_device), row['bytes_per_device']),
                                                  limit=limit // target.chips)
      best = searched.get(row['largest_batch']['batch'], {})
      if best.get('estimate') and best is not row:  # The compiler's estimate at that batch too.
        row['largest_batch']['estimate'] = best['estimate']
        if program.name.startswith('train_step'):
          steps_there = experiment.info.num_train // (row['largest_batch']['batch'] * target.chips)
          best['estimate']['epoch_seconds'] = steps_there * best['estimate']['step_seconds']
    result['programs'][program.name] = row
    print(f'{PROG}: {name} {program.name}: {table.summary(row)}', file=sys.stderr)
  return result


def _in_own_process(name: str) -> Dict:
  """One target's result, compiled by this command in a process of its own: libtpu crashed compiling for a
  second TPU generation in one process (v5e, then v6e). Its lines pass through; a crash is an error row."""
  with tempfile.TemporaryDirectory() as scratch:
    out = os.path.join(scratch, 'target.json')
    argv = [arg for arg in sys.argv[1:] if not arg.startswith(('--target', '--out'))]
    status = subprocess.run([sys.executable, '-m', 'rpat_jax.aot', *argv, f'--target={name}', f'--out={out}'],
                            stdout=subprocess.DEVNULL, check=False).returncode
    if status == 2:
      sys.exit(2)  # A usage error: its line is printed already.
    if os.path.exists(out):
      with open(out) as f:
        return json.load(f)['targets'][0]
  print(f'{PROG}: {name}: the compiling process ended with status {status}', file=sys.stderr)
  return {'target': name, 'programs': {'(all)': {'error': f'the compiling process ended with status {status}'}}}


def main(argv, cli) -> None:
  if len(argv) > 1:
    cli_lib.fail(PROG, f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    _check(cli)
    config = threats.resolve(cli.config.value)
    programs_lib.check_dataset(config)
    for name in cli.target.value:  # The batches must split over every target's devices.
      validation.validate(config, targets.parse(name).chips, data_on_disk=False)
  except (validation.ConfigError, targets.TargetError) as error:
    cli_lib.fail(PROG, error)
  if cli.cache_dir.value:
    jax.config.update('jax_compilation_cache_dir', cli.cache_dir.value)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  if len(cli.target.value) > 1:
    results = [_in_own_process(name) for name in cli.target.value]
  else:
    try:
      results = [run_target(config, targets.parse(cli.target.value[0]), cli)]
    except (validation.ConfigError, targets.TargetError) as error:
      cli_lib.fail(PROG, error)
  report = {'config': next((a.split('=', 1)[1] for a in sys.argv if a.startswith('--config=')), ''),
            'model': config.model.name,
            'dtype': config.model.dtype, 'method': config.method, 'rpat': bool(config.rpat.enabled),
            'batch_size': config.batch_size, 'jax': jax.__version__, 'targets': results}
  markdown = table.markdown(report)
  print(markdown, end='')
  if cli.out.value:
    paths.write_atomic(cli.out.value, json.dumps(report, indent=1, default=str))
    paths.write_atomic(os.path.splitext(cli.out.value)[0] + '.md', markdown)
  if any(not row.get('fits', False) for result in results for row in result['programs'].values()):
    sys.exit(1)


if __name__ == '__main__':
  cli_lib.run_app(PROG, main, define_flags())
