"""PyTorch state_dict <-> Flax variables for the model zoo, and the `.pt` / Orbax files around them.

The command line (`__main__.py`):

  python -m rpat_jax.convert --model=preact_resnet18 --from_torch=model_best.pth --to=/ckpt/prn18
  python -m rpat_jax.convert --model=preact_resnet18 --from_flax=/ckpt/prn18 --to_torch=prn18.pt

`--to` writes an Orbax StandardSave of `{'params', 'batch_stats'}` (`save_variables`; read it back with
`load_variables(dir)`); `--from_flax` reads such a directory, or the `state` item of a training
checkpoint (`workdir/checkpoints/<epoch>/state`). Only the weights convert: RPAT_SOTAs / ReBAT
normalise inputs with the CIFAR mean and std outside the model, so their models need
`config.model.normalize=True`; RPAT_Benchmarks and AutoAttack's example feed images in [0, 1].

Layouts (the key names of the PyTorch code a state_dict came from), per model:
- `preact_resnet18`: `rpat_sotas` (= ReBAT): conv1, layer{1-4}.{0,1}.{bn1,conv1,bn2,conv2,shortcut.0}, bn, linear.
- `preact_resnet18_benchmarks`: `rpat_benchmarks` (RPAT_Benchmarks' `pre_resnet18`): conv1, bn1,
  layer*.*.{bn1,conv1,bn2,conv2,shortcut.0}, linear.
- `resnet18`: `kuangliu` (AutoAttack's example; RPAT_Benchmarks' BasicBlock has the same keys): conv1, bn1,
  layer*.*.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}, linear.
- `resnet18_bottleneck`: `rpat_benchmarks`: as `kuangliu` plus conv3, bn3 in every block.
- `wide_resnet`: `rpat_sotas` (= ReBAT, TRADES) with head `fc`, or `rpat_benchmarks` with head `linear`:
  conv1, block{1-3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}, bn1, head.
State_dicts here are {key: numpy array}: torch is imported only by the CLI's file reading and writing.
"""

import dataclasses
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rpat_jax import models
from rpat_jax.run import paths



@dataclasses.dataclass(frozen=True)
class TorchNames:
  """How one of our models is named in the PyTorch code its weights come from."""
  heads: Mapping[str, str]  # Layout -> the classifier module's name; the first layout is the export default.
  top_level: Mapping[str, str]  # Our top-level module names -> PyTorch's: the stem, the stem / final BN.
  block: str = 'layer{stage}.{position}'  # A residual block's module prefix (stage counted from 1).
  shortcut_conv: Optional[str] = None  # The 1x1 shortcut's name when not the kuangliu `shortcut.0`.


_RESNET_STEM = {'stem': 'conv1', 'stem_bn': 'bn1'}
# The converter's one registry, by our model name (`rpat_jax.models.MODELS`); the layouts are named after
# the PyTorch code: `rpat_sotas` (= ReBAT), `rpat_benchmarks`, `kuangliu` (AutoAttack's example model).
TORCH_NAMES = {
    'preact_resnet18': TorchNames({'rpat_sotas': 'linear'}, {'stem': 'conv1', 'final_bn': 'bn'}),
    'preact_resnet18_benchmarks': TorchNames({'rpat_benchmarks': 'linear'}, _RESNET_STEM),
    'resnet18': TorchNames({'kuangliu': 'linear', 'rpat_benchmarks': 'linear'}, _RESNET_STEM),
    'resnet18_bottleneck': TorchNames({'rpat_benchmarks': 'linear'}, _RESNET_STEM),
    'wide_resnet': TorchNames({'rpat_sotas': 'fc', 'rpat_benchmarks': 'linear'}, {'stem': 'conv1', 'final_bn': 'bn1'},
                              block='block{stage}.layer.{position}', shortcut_conv='convShortcut'),
    # Ours only: the PyTorch twin in rpat_jax/bench/torch_models.py.
    'small_cnn': TorchNames({'rpat_jax': 'head'},
                            {name: name for name in ('conv0', 'bn0', 'conv1', 'bn1', 'conv2', 'bn2')}),
}
_SHORTCUTS = {'shortcut': 'shortcut.0', 'shortcut_conv': 'shortcut.0', 'shortcut_bn': 'shortcut.1'}
_DATA_PARALLEL_PREFIX = 'module.'
_COUNTER = 'num_batches_tracked'

# One PyTorch tensor: its key, the Flax leaf it maps to ((collection, *module path, leaf name), or None for
# the BatchNorm batch counter) and how its axes map: 'conv' OIHW <-> HWIO, 'linear' [out, in] <-> [in, out].
Entry = Tuple[str, Optional[Tuple[str, ...]], str]


def check_layout(model_name: str, layout: Optional[str]) -> str:
  """Returns the layout to use (the default when None); ValueError for unsupported names."""
  if model_name not in TORCH_NAMES:
    raise ValueError(f'model {model_name!r} has no PyTorch layout; supported: {", ".join(TORCH_NAMES)}')
  heads = TORCH_NAMES[model_name].heads
  layout = layout or next(iter(heads))
  if layout not in heads:
    raise ValueError(f'layout {layout!r} is not one of {model_name}: {", ".join(heads)}')
  return layout


_TORCH_ORDER = ('weight', 'bias', 'running_mean', 'running_var', _COUNTER)  # Within a module.


def _natural(key: str):
  """Sort key: modules in natural order (layer2.10 after layer2.9), tensors in PyTorch's order within one."""
  module, name = key.rsplit('.', 1)
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', module)] + [_TORCH_ORDER.index(name)]


def _block_position(index: int, stage_sizes: Tuple[int, ...]) -> Tuple[int, int]:
  """(stage from 1, position in the stage) of the `index`-th residual block, counted over all stages."""
  for stage, size in enumerate(stage_sizes, start=1):
    if index < size:
      return stage, index
    index -= size
  raise ValueError(f'block {index} is beyond the stages {stage_sizes}')


def _torch_module(names: TorchNames, head: str, path: Tuple[str, ...], stage_sizes: Tuple[int, ...]) -> str:
  """The PyTorch module name of a Flax module path, e.g. ('PreActBlock_3', 'Conv_1') -> 'layer2.1.conv2'."""
  if path == ('Head_0', 'head'):
    return head
  if len(path) == 1:
    return names.top_level[path[0]]
  block, layer = path
  stage, position = _block_position(int(block.rsplit('_', 1)[1]), stage_sizes)
  prefix = names.block.format(stage=stage, position=position)
  if layer in _SHORTCUTS:
    name = names.shortcut_conv or _SHORTCUTS[layer]
  else:  # Conv_k -> conv{k+1}, BatchNorm_k -> bn{k+1}: both codes number layers in call order.
    kind, number = layer.rsplit('_', 1)
    name = {'Conv': 'conv', 'BatchNorm': 'bn'}[kind] + str(int(number) + 1)
  return f'{prefix}.{name}'


def _entries(model_name: str, layout: str, shapes: Mapping[Tuple[str, ...], Any],
             stage_sizes: Tuple[int, ...]) -> List[Entry]:
  """Every PyTorch key of the model, in natural key order, from the flat Flax shapes {(collection, ...): .}."""
  names = TORCH_NAMES[model_name]
  entries = []
  for (collection, *path, leaf) in shapes:
    module = _torch_module(names, names.heads[layout], tuple(path), stage_sizes)
    flax_key = (collection, *path, leaf)
    if leaf == 'kernel':
      entries.append((f'{module}.weight', flax_key, 'conv' if len(shapes[flax_key].shape) == 4 else 'linear'))
    elif leaf == 'scale':
      entries.append((f'{module}.weight', flax_key, 'copy'))
      entries.append((f'{module}.{_COUNTER}', None, 'counter'))
    else:  # bias (BatchNorm or Dense), mean, var.
      name = {'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}[leaf]
      entries.append((f'{module}.{name}', flax_key, 'copy'))
  return sorted(entries, key=lambda entry: _natural(entry[0]))


# transform -> (Flax axes -> PyTorch axes, PyTorch -> Flax): conv HWIO <-> OIHW, linear [in, out] <-> [out, in].
_AXES = {'conv': ((3, 2, 0, 1), (2, 3, 1, 0)), 'linear': ((1, 0), (1, 0))}


def _to_torch_axes(value, transform: str):
  return value if transform == 'copy' else np.transpose(value, _AXES[transform][0])


def _to_flax_axes(value, transform: str):
  return value if transform == 'copy' else np.transpose(value, _AXES[transform][1])


def _expected_shapes(model_name: str, model_kwargs: Dict[str, Any]):
  """(flat {(collection, *path, leaf): ShapeDtypeStruct} of our model, without allocating weights, and the
  blocks per stage). Raises ValueError for a model whose residual blocks cannot be placed in stages."""
  model = models.create_model(model_name, **model_kwargs)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  shapes = flax.traverse_util.flatten_dict(variables)
  blocks = {path[1] for path in shapes if len(path) > 3 and path[1] != 'Head_0'}  # (collection, block, layer, leaf).
  stage_sizes = tuple(getattr(model, 'stage_sizes', ()))
  if len(blocks) != sum(stage_sizes):
    raise ValueError(f'{model_name} has {len(blocks)} residual blocks but its stage_sizes {stage_sizes} '
                     f'place {sum(stage_sizes)}: give the model a `stage_sizes` property to convert it')
  return shapes, stage_sizes


def _infer_torch_kwargs(model_name: str, head: str, state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """num_classes (and the WRN depth and width, the small CNN's width) read off the state_dict; explicit kwargs win."""
  kwargs = {}
  if f'{head}.weight' in state_dict:
    classes, features = np.shape(state_dict[f'{head}.weight'])
    kwargs['num_classes'] = classes
    if model_name == 'small_cnn':
      kwargs['width'] = features // 4
    if model_name == 'wide_resnet':
      kwargs['widen_factor'] = features // 64
      per_group = len([k for k in state_dict if re.fullmatch(r'block1\.layer\.\d+\.conv1\.weight', k)])
      if per_group:
        kwargs['depth'] = 6 * per_group + 4
  return kwargs


def _hint(model_name: str, state_dict: Mapping[str, Any]) -> str:
  # Its blocks open with BN of the block's input: 64 channels in layer2.0 (a post-activation ResNet: 128).
  if (model_name == 'preact_resnet18' and 'bn.weight' not in state_dict
      and np.shape(state_dict.get('bn1.weight')) == (64,)
      and np.shape(state_dict.get('layer2.0.bn1.weight')) == (64,)):
    return (" (this looks like RPAT_Benchmarks' pre_resnet18: a BN stem and no final BN; convert it with"
            ' --model=preact_resnet18_benchmarks)')
  return ''


def torch_to_flax(state_dict: Mapping[str, Any], model_name: str, layout: Optional[str] = None,
                  **model_kwargs) -> Dict[str, Any]:
  """Flax variables {'params', 'batch_stats'} (numpy float32) for `models.create_model(model_name, ...)`.

  state_dict: PyTorch key -> numpy array (a `module.` prefix is stripped; `num_batches_tracked` is
  ignored). layout: None picks the model's layout whose classifier key is present. model_kwargs:
  create_model fields; num_classes (and WRN depth / widen_factor) default to what the weights say.
  Raises ValueError naming the first missing, unexpected or wrongly shaped key.
  """
  state_dict = {key[len(_DATA_PARALLEL_PREFIX):] if key.startswith(_DATA_PARALLEL_PREFIX) else key: value
                for key, value in state_dict.items()}
  if layout is None and model_name in TORCH_NAMES:  # The first layout whose classifier key is present.
    heads = TORCH_NAMES[model_name].heads
    layout = next((name for name, head in heads.items() if f'{head}.weight' in state_dict), None)
  layout = check_layout(model_name, layout)
  inferred = _infer_torch_kwargs(model_name, TORCH_NAMES[model_name].heads[layout], state_dict)
  model_kwargs = {'num_classes': 10, **inferred, **model_kwargs}
  shapes, stage_sizes = _expected_shapes(model_name, model_kwargs)
  entries = _entries(model_name, layout, shapes, stage_sizes)
  where, hint = f'{model_name} in the {layout} layout', _hint(model_name, state_dict)
  flat = {}
  for key, flax_key, transform in entries:
    if transform == 'counter':
      continue
    expected = _to_torch_axes(np.empty(shapes[flax_key].shape, np.bool_), transform).shape
    if key not in state_dict:
      raise ValueError(f'state_dict is missing key {key!r} (expected shape {expected}) for {where}{hint}')
    value = np.asarray(state_dict[key])
    if value.shape != expected:
      raise ValueError(f'state_dict key {key!r} has shape {value.shape}, expected {expected} for {where}{hint}')
    flat[flax_key] = np.array(_to_flax_axes(value, transform), dtype=shapes[flax_key].dtype, order='C')
  known = {entry[0] for entry in entries}
  for key, value in state_dict.items():
    if key not in known:
      raise ValueError(f'state_dict has unexpected key {key!r} (shape {np.shape(value)}) for {where}{hint}')
  return flax.traverse_util.unflatten_dict(flat)


def flax_to_torch(variables: Mapping[str, Any], model_name: str, layout: Optional[str] = None,
                  **model_kwargs) -> Dict[str, np.ndarray]:
  """The PyTorch state_dict (numpy arrays, `num_batches_tracked` = 0) of Flax {'params', 'batch_stats'}.

  layout: the key names to write (default: the model's first layout, e.g. `fc` for the WRN head of
  RPAT_SOTAs). num_classes and WRN depth / widen_factor default to what the variables say.
  Raises ValueError naming the first missing, unexpected or wrongly shaped Flax leaf.
  """
  layout = check_layout(model_name, layout)
  for collection in ('params', 'batch_stats'):
    if collection not in variables:
      raise ValueError(f'variables have no {collection!r}; they hold {", ".join(map(str, variables))}')
  flat = flax.traverse_util.flatten_dict({name: variables[name] for name in ('params', 'batch_stats')})
  kernel = flat.get(('params', 'Head_0', 'head', 'kernel'))
  inferred = {}
  if kernel is not None:
    features, inferred['num_classes'] = np.shape(kernel)
    if model_name == 'small_cnn':
      inferred['width'] = features // 4
    if model_name == 'wide_resnet':
      blocks = {path[1] for path in flat if path[1].startswith('WideBlock_')}
      inferred.update(widen_factor=features // 64, depth=2 * len(blocks) + 4)
  model_kwargs = {'num_classes': 10, **inferred, **model_kwargs}
  shapes, stage_sizes = _expected_shapes(model_name, model_kwargs)
  for path, shape in shapes.items():
    if path not in flat:
      raise ValueError(f'variables are missing {"/".join(path)} (expected shape {shape.shape})')
    if np.shape(flat[path]) != shape.shape:
      raise ValueError(f'variables {"/".join(path)} has shape {np.shape(flat[path])}, expected {shape.shape}')
  for path in flat:
    if path not in shapes:
      raise ValueError(f'variables have unexpected {"/".join(path)} for {model_name}')
  state_dict = {}
  for key, flax_key, transform in _entries(model_name, layout, shapes, stage_sizes):
    if transform == 'counter':
      state_dict[key] = np.zeros((), np.int64)
    else:
      state_dict[key] = np.array(_to_torch_axes(np.asarray(flat[flax_key]), transform), order='C')
  return state_dict


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise RuntimeError(f'reading or writing PyTorch files needs torch ({error}); pip install torch') from None
  return torch


def load_torch_file(path: str) -> Dict[str, np.ndarray]:
  """A state_dict saved with torch.save (or a dict holding one under 'state_dict'), as numpy arrays."""
  if not os.path.isfile(path):
    raise ValueError(f'--from_torch={path}: no such file')
  try:
    loaded = _torch().load(path, map_location='cpu', weights_only=True)
  except Exception as error:  # pylint: disable=broad-except  # Unpickling, EOF, zip and weights_only errors.
    if isinstance(error, EOFError) or os.path.getsize(path) == 0:
      reason = 'the file is empty or cut short'
    else:  # torch's own messages here talk about weights_only and legacy formats: beside the point.
      reason = f'its bytes are not what torch.save writes: {type(error).__name__}'
    raise ValueError(f'--from_torch={path} is not a readable PyTorch state_dict file ({reason})') from None
  if isinstance(loaded, Mapping) and isinstance(loaded.get('state_dict'), Mapping):
    loaded = loaded['state_dict']
  if not isinstance(loaded, Mapping):
    raise ValueError(f'{path} holds a {type(loaded).__name__}, not a state_dict')
  return {key: value.detach().cpu().numpy() if hasattr(value, 'detach') else np.asarray(value)
          for key, value in loaded.items()}


def save_torch_file(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  torch = _torch()
  torch.save({key: torch.from_numpy(np.array(value)) for key, value in state_dict.items()}, path)


def save_variables(variables: Mapping[str, Any], directory: str) -> None:
  """Writes {'params', 'batch_stats'} as an Orbax StandardSave into the new directory `directory`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(paths.as_path(directory), {name: variables[name] for name in ('params', 'batch_stats')})
    checkpointer.wait_until_finished()


def load_variables(directory: str) -> Dict[str, Any]:
  """{'params', 'batch_stats'} (numpy) of a `save_variables` directory or a training checkpoint's `state`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(paths.as_path(directory))
  except Exception as error:  # pylint: disable=broad-except  # Orbax and TensorStore raise many kinds.
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    raise ValueError(f'{directory} is not a readable Orbax directory of Flax variables ({reason[:200]})') from None
  if not isinstance(restored, Mapping) or 'params' not in restored:
    raise ValueError(f'{directory} holds no params (not written by --to, nor a checkpoint state)')
  return {name: restored[name] for name in ('params', 'batch_stats') if name in restored}
