"""PyTorch <-> Flax conversion: same logits as the PyTorch networks, exact round trips, named errors."""

import functools
import importlib.util
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest
from absl import flags

torch = pytest.importorskip('torch')
from rpat_jax import convert  # noqa: E402
from rpat_jax.convert import __main__ as convert_main  # noqa: E402
from rpat_jax import models  # noqa: E402
from rpat_jax.models import resnet  # noqa: E402
from rpat_jax.bench import torch_models  # noqa: E402


def _autoattack_examples() -> str:
  """The `examples/` folder of the installed pyautoattack package ('' without the package)."""
  spec = importlib.util.find_spec('pyautoattack')
  return os.path.join(os.path.dirname(spec.origin), 'examples') if spec else ''


_AUTOATTACK_EXAMPLES = _autoattack_examples()
_TOLERANCE = 1e-4  # max |ours - torch| / max |torch|, float32 at full matmul precision.

# (our model, layout, the PyTorch reference network with that layout, our model's fields).
_WRN_16_2 = {'depth': 16, 'widen_factor': 2}
CASES = {
    'preact_resnet18': ('preact_resnet18', 'rpat_sotas', torch_models.PreActResNet18, {}),
    'preact_resnet18_benchmarks': ('preact_resnet18_benchmarks', 'rpat_benchmarks',
                                   torch_models.PreActResNet18Benchmarks, {}),
    'resnet18': ('resnet18', 'kuangliu', torch_models.ResNet18, {}),
    'resnet18_bottleneck': ('resnet18_bottleneck', 'rpat_benchmarks',
                            functools.partial(torch_models.ResNet18, bottleneck=True), {}),
    # WRN-16-2 has both block kinds of WRN-34-10 (1x1 shortcut / identity) at a fraction of the cost.
    'wrn_sotas': ('wide_resnet', 'rpat_sotas', functools.partial(torch_models.WideResNet, 16, 2, head='fc'),
                  _WRN_16_2),
    'wrn_benchmarks': ('wide_resnet', 'rpat_benchmarks',
                       functools.partial(torch_models.WideResNet, 16, 2, head='linear'), _WRN_16_2),
}


def _numpy_state(module) -> dict:
  return {key: value.numpy() for key, value in module.state_dict().items()}


_IMAGE_SIZE = {'preact_resnet18_benchmarks': 64}  # [B]'s pre_resnet18 only runs on 64x64 inputs.


def _relative_difference(model_name: str, variables, network, fields, seed: int = 0) -> float:
  """Largest |logit difference| over the largest |torch logit|, on 4 random images in [0, 1]."""
  size = _IMAGE_SIZE.get(model_name, 32)
  images = np.random.default_rng(seed).uniform(size=(4, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = network(torch.from_numpy(images)).numpy()
  model = models.create_model(model_name, expected.shape[1], **fields)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))  # One compile beats eager op-by-op on CPU.
  with jax.default_matmul_precision('highest'):
    logits = np.asarray(apply(variables, images.transpose(0, 2, 3, 1)))
  assert logits.shape == expected.shape
  return float(np.max(np.abs(logits - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize('case', list(CASES))
def test_converted_weights_give_the_torch_logits_and_round_trip_exactly(case):
  model_name, layout, build, fields = CASES[case]
  network = torch_models.randomize(build(), seed=1)
  state_dict = _numpy_state(network)
  variables = convert.torch_to_flax(state_dict, model_name)  # Layout and fields read off the weights.
  assert _relative_difference(model_name, variables, network, fields) < _TOLERANCE

  back = convert.flax_to_torch(variables, model_name, layout=layout)
  assert list(back) == sorted(back, key=convert._natural)
  assert set(back) == set(state_dict)
  for key, value in state_dict.items():
    if key.endswith('num_batches_tracked'):
      assert back[key] == 0 and back[key].dtype == np.int64  # Not a Flax variable: written as 0.
    else:
      assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key
  again = convert.torch_to_flax(back, model_name, layout=layout, **fields)
  jax.tree.map(np.testing.assert_array_equal, again, variables)


@pytest.mark.parametrize('case', ['preact_resnet18', 'wrn_sotas'])
def test_flax_to_torch_to_flax_is_exact_and_loads_into_torch(case):
  model_name, layout, build, fields = CASES[case]
  model = models.create_model(model_name, 10, **fields)
  # Random variables of the model's shapes (numpy: Flax's eager init of 11M weights takes ~15 s on CPU).
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
  rng, flat = np.random.default_rng(4), {}
  for path, shape in flax.traverse_util.flatten_dict(shapes).items():
    if path[-1] == 'kernel':
      values = rng.normal(0, (2 / np.prod(shape.shape[:-1])) ** 0.5, shape.shape)
    elif path[-1] in ('scale', 'var'):
      values = rng.uniform(0.5, 1.5, shape.shape)
    else:  # BatchNorm offset and running mean, classifier bias.
      values = rng.normal(0, 0.1, shape.shape)
    flat[path] = values.astype(np.float32)
  variables = flax.traverse_util.unflatten_dict(flat)
  state_dict = convert.flax_to_torch(variables, model_name, layout=layout)
  jax.tree.map(np.testing.assert_array_equal, convert.torch_to_flax(state_dict, model_name), variables)
  network = build()
  network.load_state_dict({key: torch.from_numpy(value) for key, value in state_dict.items()}, strict=True)
  assert _relative_difference(model_name, variables, network.eval(), fields) < _TOLERANCE


@pytest.fixture
def resnet34():
  """A ResNet-34 (BasicBlocks [3, 4, 6, 3]) registered as a model with the kuangliu layout, for this test."""
  models.MODELS['resnet34'] = models.ModelSpec(functools.partial(resnet.ResNet, block=resnet.BasicBlock,
                                                                 blocks=(3, 4, 6, 3)))
  convert.TORCH_NAMES['resnet34'] = convert.TORCH_NAMES['resnet18']
  yield 'resnet34'
  del models.MODELS['resnet34'], convert.TORCH_NAMES['resnet34']


def test_blocks_map_to_stages_by_the_model_s_stage_sizes(resnet34):
  """Not two blocks per stage: ResNet-34's keys (layer1.2, layer2.3, layer3.5, ...) come from its stages."""
  network = torch_models.randomize(torch_models.ResNet(blocks=(3, 4, 6, 3)), seed=3)
  state_dict = _numpy_state(network)
  variables = convert.torch_to_flax(state_dict, resnet34)
  assert _relative_difference(resnet34, variables, network, {}) < _TOLERANCE
  back = convert.flax_to_torch(variables, resnet34)
  assert set(back) == set(state_dict) and 'layer3.5.conv2.weight' in back
  for key, value in state_dict.items():
    if not key.endswith('num_batches_tracked'):
      assert np.array_equal(back[key], value), key


def test_a_model_whose_blocks_cannot_be_placed_in_stages_is_refused(resnet34):
  class NoStages(resnet.ResNet):  # The same network without a stage_sizes property.
    stage_sizes = ()
  models.MODELS['resnet34'] = models.ModelSpec(functools.partial(NoStages, block=resnet.BasicBlock,
                                                                 blocks=(3, 4, 6, 3)))
  with pytest.raises(ValueError, match=r'16 residual blocks but its stage_sizes \(\) place 0'):
    convert.flax_to_torch({'params': {}, 'batch_stats': {}}, resnet34)


def test_wrn_34_10_keys_and_shapes_convert_in_both_layouts():
  for head in ('fc', 'linear'):
    with torch.device('meta'):  # Shapes only: no 46M-weight initialisation.
      network = torch_models.WideResNet(34, 10, num_classes=100, head=head)
    state_dict = {key: np.ones(value.shape, np.int64 if key.endswith('tracked') else np.float32)
                  for key, value in network.state_dict().items()}
    variables = convert.torch_to_flax(state_dict, 'wide_resnet')  # Depth 34, width 10, 100 classes inferred.
    assert variables['params']['Head_0']['head']['kernel'].shape == (640, 100)
    assert len([name for name in variables['params'] if name.startswith('WideBlock_')]) == 15
    layout = 'rpat_sotas' if head == 'fc' else 'rpat_benchmarks'
    back = convert.flax_to_torch(variables, 'wide_resnet', layout=layout)
    assert {key: value.shape for key, value in back.items()} == {k: v.shape for k, v in state_dict.items()}


@pytest.mark.skipif(not os.path.exists(os.path.join(_AUTOATTACK_EXAMPLES, 'model_test.pt')),
                    reason="pyautoattack's examples/model_test.pt is not installed")
def test_autoattack_example_model_gives_the_same_logits_in_our_resnet18():
  spec = importlib.util.spec_from_file_location('autoattack_resnet', os.path.join(_AUTOATTACK_EXAMPLES, 'resnet.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  path = os.path.join(_AUTOATTACK_EXAMPLES, 'model_test.pt')
  state_dict = convert.load_torch_file(path)  # Saved on a GPU; loaded onto the CPU.
  network = module.ResNet18()
  network.load_state_dict({key: torch.from_numpy(value) for key, value in state_dict.items()})
  variables = convert.torch_to_flax(state_dict, 'resnet18')
  assert _relative_difference('resnet18', variables, network.eval(), {}, seed=5) < _TOLERANCE


def _small_state_dict():
  return _numpy_state(torch_models.randomize(torch_models.ResNet18(), seed=2))


@pytest.mark.parametrize('edit,message', [
    (lambda sd: sd.update({'layer1.0.conv1.weight': np.zeros((64, 64, 1, 1), np.float32)}),
     r"key 'layer1.0.conv1.weight' has shape \(64, 64, 1, 1\), expected \(64, 64, 3, 3\)"),
    (lambda sd: sd.pop('layer2.0.shortcut.0.weight'),
     r"missing key 'layer2.0.shortcut.0.weight' \(expected shape \(128, 64, 1, 1\)\)"),
    (lambda sd: sd.pop('bn1.running_var'), r"missing key 'bn1.running_var' \(expected shape \(64,\)\)"),
    (lambda sd: sd.update({'layer5.0.conv1.weight': np.zeros(3, np.float32)}),
     r"unexpected key 'layer5.0.conv1.weight'"),
    (lambda sd: sd.update({'linear.weight': np.zeros((10, 256), np.float32)}),
     r"key 'linear.weight' has shape \(10, 256\), expected \(10, 512\)"),
])
def test_a_wrong_or_missing_key_is_named(edit, message):
  state_dict = _small_state_dict()
  edit(state_dict)
  with pytest.raises(ValueError, match=message):
    convert.torch_to_flax(state_dict, 'resnet18')


def test_data_parallel_prefix_and_missing_counters_are_accepted():
  state_dict = _small_state_dict()
  wrapped = {f'module.{key}': value for key, value in state_dict.items() if 'num_batches' not in key}
  jax.tree.map(np.testing.assert_array_equal, convert.torch_to_flax(wrapped, 'resnet18'),
               convert.torch_to_flax(state_dict, 'resnet18'))


def test_flax_side_errors_and_unsupported_models():
  variables = convert.torch_to_flax(_small_state_dict(), 'resnet18')
  variables['params']['stem']['kernel'] = np.zeros((3, 3, 3, 32), np.float32)
  with pytest.raises(ValueError, match=r'params/stem/kernel has shape \(3, 3, 3, 32\), expected \(3, 3, 3, 64\)'):
    convert.flax_to_torch(variables, 'resnet18')
  with pytest.raises(ValueError, match='no PyTorch layout'):
    convert.torch_to_flax({}, 'vit_b16')
  with pytest.raises(ValueError, match="layout 'kuangliu' is not one of wide_resnet"):
    convert.flax_to_torch(variables, 'wide_resnet', layout='kuangliu')
  # RPAT_Benchmarks' pre_resnet18 (a BN stem `bn1`, no final BN `bn`) is another model name: say which.
  state_dict = _numpy_state(torch_models.PreActResNet18Benchmarks())
  with pytest.raises(ValueError, match=r"missing key 'bn\.weight'.*pre_resnet18.*--model=preact_resnet18_benchmarks"):
    convert.torch_to_flax(state_dict, 'preact_resnet18')


def _cli(**values):
  """Runs the converter's main as `python -m rpat_jax.convert --name=value ...`, on flags of its own."""
  flag_values = flags.FlagValues()
  cli = convert_main.define_flags(flag_values)
  flag_values(['convert'] + [f'--{name}={value}' for name, value in values.items()])
  convert_main.main(['convert'], cli)


def test_cli_round_trip_through_orbax_and_a_pt_file(tmp_path):
  network = torch_models.randomize(torch_models.WideResNet(10, 1, head='linear'), seed=6)
  torch.save(network.state_dict(), tmp_path / 'in.pt')
  _cli(model='wide_resnet', from_torch=tmp_path / 'in.pt', to=tmp_path / 'ckpt')
  variables = convert.load_variables(str(tmp_path / 'ckpt'))
  assert variables['params']['Head_0']['head']['kernel'].shape == (64, 10)  # Evaluation code reads this.
  _cli(model='wide_resnet', layout='rpat_benchmarks', from_flax=tmp_path / 'ckpt', to_torch=tmp_path / 'out.pt')
  written = torch.load(tmp_path / 'out.pt', weights_only=True)
  assert set(written) == set(network.state_dict())
  for key, value in network.state_dict().items():
    if not key.endswith('num_batches_tracked'):
      assert torch.equal(written[key], value), key


@pytest.mark.parametrize('values,message', [
    ({'from_torch': 'absent.pt', 'to': 'out'}, 'absent.pt'),
    ({'from_torch': 'absent.pt'}, '--from_torch needs --to=DIR'),
    ({}, 'give exactly one of --from_torch'),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, values, message):
  values = {name: str(tmp_path / file_name) for name, file_name in values.items()}
  with pytest.raises(SystemExit) as exit_info:
    _cli(model='resnet18', **values)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('rpat_jax.convert: error: ') and message in lines[0]


def test_importing_the_converter_does_not_import_torch():
  code = 'import sys, rpat_jax.convert; sys.exit(int("torch" in sys.modules))'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  assert subprocess.run([sys.executable, '-c', code], cwd=root, timeout=120).returncode == 0


@pytest.mark.parametrize('content, message', [
    (b'not a state_dict ' * 32, 'its bytes are not what torch.save writes'),
    (bytes(512), 'its bytes are not what torch.save writes'),
    (b'', 'the file is empty or cut short'),
])
def test_a_file_that_is_not_a_state_dict_is_one_line(tmp_path, capsys, content, message):
  (tmp_path / 'in.pt').write_bytes(content)
  with pytest.raises(SystemExit) as exit_info:
    _cli(model='resnet18', from_torch=tmp_path / 'in.pt', to=tmp_path / 'out')
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and message in lines[0] and not (tmp_path / 'out').exists()
  (tmp_path / 'empty').mkdir()
  with pytest.raises(SystemExit):
    _cli(model='resnet18', from_flax=tmp_path / 'empty', to_torch=tmp_path / 'out.pt')
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and 'is not a readable Orbax directory' in lines[0]
