"""The benchmark: FLOP counts against hand counts, the peak table, the PyTorch twin against our step, and
the command's JSON (tiny sizes; no timing is asserted)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, tiny_config
from rpat_jax import attacks
from rpat_jax import experiment
from rpat_jax import steps
from rpat_jax.bench import report


def _compiled_flops(fn, *args) -> float:
  return report.cost_flops(jax.jit(fn).lower(*args).compile().cost_analysis())


def test_flops_of_a_small_network_match_a_hand_count():
  batch, side, channels, features, classes = 4, 8, 3, 5, 7
  params = {'conv': jnp.ones((3, 3, channels, features)), 'dense': jnp.ones((side * side * features, classes))}
  x = jnp.ones((batch, side, side, channels))

  def network(params, x):
    y = jax.lax.conv_general_dilated(x, params['conv'], (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y.reshape(batch, -1) @ params['dense']

  # A 3x3 'SAME' conv multiplies only the taps that fall inside the image: per axis, each of the `side`
  # outputs sees 3 taps except the two border outputs, which see 2.
  taps_per_axis = 3 * side - 2
  conv_flops = 2 * batch * channels * features * taps_per_axis ** 2
  dense_flops = 2 * batch * side * side * features * classes
  assert _compiled_flops(network, params, x) == conv_flops + dense_flops


def test_attack_flops_grow_with_steps_only_when_unrolled():
  """XLA counts a loop body once; the unrolled attack is counted per step, which is what the bench uses."""
  weights = jnp.ones((48, 10)) * 0.01
  x = jnp.full((8, 4, 4, 3), 0.5)
  labels = jnp.arange(8) % 10
  logits_fn = lambda images: images.reshape(8, -1) @ weights

  def flops(steps, unroll):
    attack = lambda x: attacks.pgd(logits_fn, jax.random.key(0), x, labels, norm='linf', eps=0.1, step_size=0.01,
                                   steps=steps, unroll=unroll)
    return _compiled_flops(attack, x)

  assert flops(2, False) == flops(6, False)
  per_step = flops(3, True) - flops(2, True)
  assert per_step > 2 * 8 * 48 * 10  # At least the forward matmul and its input gradient.
  assert flops(6, True) - flops(2, True) == pytest.approx(4 * per_step, rel=1e-6)


def test_peak_table_and_mfu():
  assert report.peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.4e12
  assert report.peak_flops('NVIDIA H100 PCIe', 'bfloat16') == 756e12
  assert report.peak_flops('TPU v4', 'float32') is None
  assert report.peak_flops('cpu', 'bfloat16') is None
  assert report.mfu(1e9, 1000.0, 1e13, 2) == pytest.approx(0.05)
  assert report.mfu(1e9, 1000.0, None, 1) is None


def test_timing_stats():
  stats = report.timing_stats([0.003, 0.001, 0.002])
  assert stats['median'] == pytest.approx(2.0) and stats['min'] == pytest.approx(1.0)
  assert stats['max'] == pytest.approx(3.0) and stats['n'] == 3


def test_torch_twin_step_equals_our_step():
  """Same weights, no random start or augmentation: the PyTorch reference step and ours give the same
  loss and the same updated parameters (PGD-2 + RPAT, fp32)."""
  torch = pytest.importorskip('torch')
  from rpat_jax import convert  # pylint: disable=import-outside-toplevel
  from rpat_jax.bench import torch_step  # pylint: disable=import-outside-toplevel
  config = tiny_config(**{'attack.random_start': False, 'data.padding': 0, 'data.flip': False,
                          'data.synthetic.image_size': 8, 'model.width': 4})
  setup = experiment.create(config)
  forward, state = setup.forward, setup.init_state()
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), 'label': rng.integers(0, 10, 16)}
  variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  new_state, metrics = jax.jit(steps.make_train_step(config, forward, 4))(
      state, jax.tree.map(jnp.asarray, batch), jax.random.key(0))

  model = torch_step.build_model(config.model, 10, variables, torch.device('cpu'))
  step = torch_step.make_step(config, model, 'reference', torch.Generator().manual_seed(0))
  loss = step(torch.as_tensor(batch['image']), torch.as_tensor(batch['label'].astype(np.int64)))
  assert float(loss) == pytest.approx(float(metrics['loss']), rel=1e-5)
  ours = convert.flax_to_torch(jax.device_get({'params': new_state.params, 'batch_stats': new_state.batch_stats}),
                               'small_cnn')
  theirs = model.state_dict()
  for key, value in ours.items():
    if key.endswith('weight') or key.endswith('bias'):
      np.testing.assert_allclose(theirs[key].numpy(), value, atol=2e-5, err_msg=key)


def _bench(tmp_path, *args):
  out = tmp_path / 'bench.json'
  command = [sys.executable, '-m', 'rpat_jax.bench', '--config=configs/smoke.py', '--config.model.width=8',
             '--config.data.synthetic.image_size=16', f'--out={out}', *args]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'})
  return result, out


@pytest.mark.slow  # A subprocess compiling the step: run by .ci/run after the README's command.
def test_train_bench_prints_every_key(tmp_path):
  pytest.importorskip('torch')
  result, out = _bench(tmp_path, '--batch_size=32', '--steps=2', '--config.attack.steps=2', '--torch',
                       '--torch_modes=reference', '--reference_batch_size=16')
  assert result.returncode == 0, result.stderr[-3000:]
  row = json.loads(result.stdout)
  assert row == json.loads(out.read_text())
  for key in ('device', 'versions', 'batch_size', 'dtype', 'compile_seconds', 'step_ms', 'images_per_second',
              'flops_per_image', 'mfu', 'torch', 'command'):
    assert key in row, key
  assert row['batch_size'] == 32 and row['dtype'] == 'bfloat16' and row['device']['platform'] == 'cpu'
  assert row['step_ms']['n'] == 2 and row['step_ms']['min'] <= row['step_ms']['median'] <= row['step_ms']['max']
  assert row['images_per_second'] == pytest.approx(32 / row['step_ms']['median'] * 1e3)
  assert row['flops_per_image'] > 0 and row['mfu'] is None  # No peak for a CPU.
  assert abs(row['flops_per_image'] / row['flops_per_image_lowered'] - 1) < 0.1
  reference = row['torch']['reference']
  assert reference['batch_size'] == 16 and reference['dtype'] == 'float32'
  assert reference['jax_speedup'] == pytest.approx(row['images_per_second'] / reference['images_per_second'])
  assert 'tuned' not in row['torch']


@pytest.mark.slow  # One of the suite's heaviest: run by .ci/run after the README's command.
def test_eval_bench_prints_every_key(tmp_path):
  pytest.importorskip('pyautoattack')
  result, _ = _bench(tmp_path, '--what=eval', '--n_examples=16', '--eval_batch_size=16', '--aa_version=custom',
                     '--attacks=apgd-ce', '--torch', '--aa_calls=1')
  assert result.returncode == 0, result.stderr[-3000:]
  row = json.loads(result.stdout)
  for key in ('pgd20_seconds', 'pgd20_acc', 'aa_seconds', 'aa_seconds_first_call', 'aa_acc', 'per_attack',
              'official'):
    assert key in row, key
  assert row['n_examples'] == 16 and row['dtype'] == 'float32' and row['clean_acc'] == 1.0
  assert row['aa_seconds'] is None and row['aa_seconds_first_call'] > 0  # One call (--aa_calls=1).
  official = row['official']
  for key in ('aa_seconds', 'aa_acc', 'pgd20_seconds', 'aa_speedup', 'aa_agreement', 'pgd20_agreement'):
    assert key in official, key
  assert official['aa_speedup'] is None
  assert official['aa_speedup_first_call'] == pytest.approx(official['aa_seconds'] / row['aa_seconds_first_call'])
  assert 0.0 <= official['aa_agreement'] <= 1.0
  # Work: APGD-CE (custom version: 100 iterations, 5 restarts) on 16 points, all robust at the start (their
  # own predictions as labels) and after (initial weights). The official code computes 101 gradients of each
  # per restart; ours at most that (a point leaves once fooled).
  assert official['aa_evaluations']['total']['backward'] == 16 * 101 * 5
  ours = row['aa_evaluations']
  assert 0 < ours['total']['backward'] <= 16 * 101 * 5 and ours['per_point']['backward'] == ours['total']['backward'] / 16


@pytest.mark.parametrize('flags, message', [
    (['--torch_modes=fast'], 'torch_modes'),
    (['--config.model.name=resnet7'], 'model.name'),
    (['--steps=0'], '--steps'),
    (['--what=eval', '--aa_calls=3'], '--aa_calls'),
    (['--torch', '--config.method=trades'], 'method'),  # Before any of our work: the twin is PGD-AT only.
])
def test_bad_flags_fail_in_one_line(flags, message, capsys, monkeypatch):
  """The command's main on flags of its own (in this process): exit 2 and one line, before any work."""
  if '--torch' in flags:
    pytest.importorskip('torch')
  from absl import flags as absl_flags  # pylint: disable=import-outside-toplevel
  from rpat_jax.bench import __main__ as bench_main  # pylint: disable=import-outside-toplevel
  flag_values = absl_flags.FlagValues()
  cli = bench_main.define_flags(flag_values)
  argv = ['bench', f'--config={os.path.join(ROOT, "configs", "smoke.py")}', *flags]
  monkeypatch.setattr(sys, 'argv', argv)  # ml_collections reads the --config.* overrides from sys.argv.
  flag_values(argv)
  with pytest.raises(SystemExit) as exit_info:
    bench_main.main(['bench'], cli)
  assert exit_info.value.code == 2
  stderr = capsys.readouterr().err
  assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr[-2000:]
