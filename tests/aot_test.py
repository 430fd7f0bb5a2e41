"""`python -m rpat_jax.aot`: targets, the HLO readers, the batch search and bad input on any machine; compiles
for a TPU slice and a GPU host where the compile-only back ends (requirements-aot.txt) are installed.

The compile-only back ends are 400 MB of wheels and a TPU compile takes tens of seconds here, so CI (which
installs requirements-test.txt) skips those tests; run them with
`JAX_PLATFORMS=cpu python -m pytest tests/aot_test.py` in a virtualenv with requirements-aot.txt.
"""

import dataclasses
import importlib.util
import os
import subprocess
import sys
import types

import pytest

from helpers import ROOT, tiny_config
from rpat_jax.aot import analysis
from rpat_jax.aot import search
from rpat_jax.aot import targets
from rpat_jax.sharding import devices
from rpat_jax import cpu

NUM_TRAIN = 2048
HAVE_TPU = importlib.util.find_spec('libtpu') is not None
HAVE_CUDA = importlib.util.find_spec('jax_cuda12_plugin') is not None

HLO = '''
  %all-reduce-start = (f32[64,10]{1,0:T(8,128)}, bf16[3,3,3,16]{3,2,1,0}) all-reduce-start(%a, %b), channel_id=1
  %all-reduce-done = (f32[64,10]{1,0}, bf16[3,3,3,16]{3,2,1,0}) all-reduce-done(%all-reduce-start)
  %all-gather-start = (u8[16,32,32,3]{3,2,1,0}, u8[128,32,32,3]{3,2,1,0}) all-gather-start(%c), dimensions={0}
  %reduce-scatter.1 = s32[16]{0} reduce-scatter(%d), dimensions={0}
  %fusion.2 = f32[8]{0} fusion(%e), kind=kLoop, calls=%all-reduce.clone
  %convolution.3 = bf16[16,32,32,16]{3,2,1,0} convolution(%x, %w), window={size=3x3}
  %dot.4 = f32[16,10]{1,0} dot(%h, %k), lhs_contracting_dims={1}
  %cudnn-conv.5 = (bf16[16,32,32,64]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), custom_call_target="__cudnn$convForward"
'''


def test_collectives_are_read_with_their_bytes():
  found = analysis.collectives(HLO)
  assert found['all-reduce'] == {'count': 1, 'bytes': 64 * 10 * 4 + 3 * 3 * 3 * 16 * 2,
                                 'largest': 64 * 10 * 4 + 3 * 3 * 3 * 16 * 2}
  assert found['all-gather'] == {'count': 1, 'bytes': 128 * 32 * 32 * 3, 'largest': 128 * 32 * 32 * 3}
  assert found['reduce-scatter']['bytes'] == 16 * 4
  assert set(found) == {'all-reduce', 'all-gather', 'reduce-scatter'}  # Not the fusion calling a clone.


def test_matrix_ops_are_counted_by_dtype():
  assert analysis.matrix_dtypes(HLO) == {'bf16': 2, 'f32': 1}


def test_targets_parse_and_reject_with_one_line():
  v5e = targets.parse('v5e:4x4')
  assert (v5e.platform, v5e.chips, v5e.processes, v5e.usable_bytes) == ('tpu', 16, 4, 16 << 30)
  h100 = targets.parse('h100x8')
  assert (h100.platform, h100.chips, h100.processes) == ('gpu', 8, 1)
  assert h100.usable_bytes == int(h100.chip.memory_bytes * targets.GPU_MEMORY_FRACTION)
  for bad in ('v9z:2x2', 'h100x9', 'tpu', 'v5e:2'):
    with pytest.raises(targets.TargetError) as error:
      targets.parse(bad)
    assert '\n' not in str(error.value) and 'v5e:4x4' in str(error.value)


def test_a_missing_back_end_names_the_package(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None)
  with pytest.raises(targets.TargetError, match='pip install libtpu'):
    targets.parse('v5e:2x2').devices()
  with pytest.raises(targets.TargetError, match='pip install jax-cuda12-plugin'):
    targets.parse('h100x8').devices()


def test_a_compiler_refusal_for_memory_is_read_as_not_fitting():
  message = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries '
             '(72.98G) exceeds available HBM (15.75G).')
  assert analysis.refused_for_memory(message) == (int(72.98 * 2**30), int(15.75 * 2**30))
  assert analysis.refused_for_memory('INVALID_ARGUMENT: bad shape (3G)') is None


def test_the_gpu_target_config_describes_the_chip():
  text = targets.gpu_target_config(targets.GPU_CHIPS['a100'])
  assert 'cuda_compute_capability { major: 8 minor: 0 }' in text and 'core_count: 108' in text
  assert 'platform_name: "CUDA"' in text and 'dnn_version_info' in text


def test_the_batch_search_finds_the_largest_fitting_batch_in_few_compiles():
  compiles = []

  def measure(batch):  # 1 GiB fixed, 30 MiB an image, a little curvature.
    compiles.append(batch)
    return (1 << 30) + batch * (30 << 20) + batch * batch * 1000

  found = search.largest_batch(measure, 16 << 30, (32, measure(32)), limit=10_000)
  compiles.pop(0)  # The first point was the program's own compile.
  assert measure(found['batch']) <= 16 << 30 < measure(found['batch'] + 16)
  assert found['batch'] % 8 == 0 and len(compiles) <= 1 + search.MAX_TRIES + 1
  assert search.largest_batch(lambda b: b << 40, 16 << 30, (32, 32 << 40), limit=100)['batch'] == 0
  assert search.largest_batch(lambda b: b, 1 << 30, (8, 8), limit=64)['batch'] == 64  # The dataset bounds it.


def test_the_cpu_gate_reads_the_target_platform():
  assert cpu.enabled()
  with devices.building_for([types.SimpleNamespace(platform='tpu')]):
    assert devices.platform() == 'tpu' and not cpu.enabled()
  with devices.building_for([types.SimpleNamespace(platform='cuda')]):
    assert devices.platform() == 'gpu' and not cpu.enabled()
  assert cpu.enabled()


def _aot(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'rpat_jax.aot', '--config=configs/smoke.py', '--cache_dir=', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_bad_input_is_one_line_and_exit_2():
  result = _aot('--target=v7q:2x2')
  lines = [line for line in result.stderr.splitlines() if line.startswith('rpat_jax.aot')]
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
  assert "--target='v7q:2x2' is not a known target" in lines[0]


def test_unknown_programs_datasets_and_batches_are_refused_before_any_compile():
  from rpat_jax.aot import __main__ as aot_main  # pylint: disable=import-outside-toplevel
  from rpat_jax.aot import programs  # pylint: disable=import-outside-toplevel
  from rpat_jax.config import validation  # pylint: disable=import-outside-toplevel
  holder = lambda value: types.SimpleNamespace(value=value)
  cli = types.SimpleNamespace(target=holder(['h100x8']), programs=holder(['train']), search=holder(['none']),
                              eval_batch_size=holder(500))
  with pytest.raises(validation.ConfigError, match="--programs/--search='train'"):
    aot_main._check(cli)  # pylint: disable=protected-access
  with pytest.raises(validation.ConfigError, match="data.name='mnist': aot knows the sizes of"):
    programs.check_dataset(tiny_config(**{'data.name': 'mnist'}))
  with pytest.raises(validation.ConfigError, match='batch_size=100 .global. is not divisible by the 8 devices'):
    validation.validate(tiny_config(batch_size=100), targets.parse('h100x8').chips, data_on_disk=False)


def _compile_rows(target_name: str, **chip_changes):
  """The train step's row of the tiny config on a target (its chip's memory changed if asked)."""
  from rpat_jax.aot import __main__ as aot_main  # pylint: disable=import-outside-toplevel
  target = targets.parse(target_name)
  if chip_changes:
    target = dataclasses.replace(target, chip=dataclasses.replace(target.chip, **chip_changes))
  cli = types.SimpleNamespace(programs=types.SimpleNamespace(value=['train_step']),
                              search=types.SimpleNamespace(value=[]),
                              eval_batch_size=types.SimpleNamespace(value=32),
                              weights_as_arguments=types.SimpleNamespace(value=False))
  config = tiny_config(**{'batch_size': 64, 'eval.batch_size': 32, 'data.synthetic.num_train': NUM_TRAIN})
  return aot_main.run_target(config, target, cli)


@pytest.mark.parametrize('target_name', [
    pytest.param('v5e:2x2', marks=pytest.mark.skipif(not HAVE_TPU, reason='needs libtpu (requirements-aot.txt)')),
    pytest.param('h100x8', marks=pytest.mark.skipif(not HAVE_CUDA, reason='needs jax-cuda12-plugin '
                                                                            '(requirements-aot.txt)')),
])
def test_the_train_step_compiles_for_a_target(target_name, capsys):
  result = _compile_rows(target_name)
  row = result['programs']['train_step']
  assert row['bytes_per_device'] > 0 and row['fits'] and row['flops_per_image'] > 0
  assert row['collectives']['all-reduce']['count'] >= 1  # The gradients (and BatchNorm's statistics).
  # The batch's pixels move (gather_rows: a reduce-scatter, on a TPU an all-reduce in 32 bits); never the dataset.
  dataset_bytes = NUM_TRAIN * 16 * 16 * 3
  assert all(entry['largest'] < dataset_bytes for entry in row['collectives'].values()), row['collectives']
  assert row['host_transfers'] == 0
  if result['platform'] == 'tpu':
    assert row['estimate']['step_seconds'] > 0 and row['estimate']['images_per_second_per_chip'] > 0
  small = _compile_rows(target_name, memory_bytes=row['bytes_per_device'] // 2)
  assert not small['programs']['train_step']['fits']
  line = [l for l in capsys.readouterr().err.splitlines() if 'does not fit' in l][-1]
  assert str(small['programs']['train_step']['bytes_per_device']) in line and str(small['device_bytes']) in line


@pytest.mark.skipif(not HAVE_TPU, reason='needs libtpu (requirements-aot.txt)')
def test_each_process_of_a_pod_slice_reads_its_quarter_of_the_dataset():
  """v5e:4x4 is 16 chips in 4 hosts: the rows each process reads (`parallel.rows_held_by`, as a pod run
  builds its arrays) are a quarter each, every row read once."""
  from rpat_jax.aot import __main__ as aot_main  # pylint: disable=import-outside-toplevel
  from rpat_jax.aot import programs  # pylint: disable=import-outside-toplevel
  with devices.building_for(targets.parse('v5e:4x4').devices()):
    experiment = programs.experiment_for(tiny_config(**{'data.synthetic.num_train': NUM_TRAIN}))
    plan = aot_main.pod_plan(experiment)
  assert plan == {'processes': 4, 'rows_per_process': [NUM_TRAIN // 4] * 4, 'every_row_read_once': True}
