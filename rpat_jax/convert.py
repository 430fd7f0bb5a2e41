"""PyTorch state_dict <-> Flax variables for the model zoo, and a CLI around Orbax and `.pt` files.

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

import os
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging

from rpat_jax import models

# model name -> {layout: the name of the classifier module}; the first layout is the default for export.
LAYOUTS = {
    'preact_resnet18': {'rpat_sotas': 'linear'},
    'preact_resnet18_benchmarks': {'rpat_benchmarks': 'linear'},
    'resnet18': {'kuangliu': 'linear', 'rpat_benchmarks': 'linear'},
    'resnet18_bottleneck': {'rpat_benchmarks': 'linear'},
    'wide_resnet': {'rpat_sotas': 'fc', 'rpat_benchmarks': 'linear'},
    'small_cnn': {'rpat_jax': 'head'},  # Ours only: the PyTorch twin of rpat_jax/bench/torch_models.py.
}
# Flax module names -> PyTorch ones, per model: the stem, the final / stem BatchNorm, the shortcut layers.
_TOP_LEVEL = {
    'preact_resnet18': {'stem': 'conv1', 'final_bn': 'bn'},
    'preact_resnet18_benchmarks': {'stem': 'conv1', 'stem_bn': 'bn1'},
    'resnet18': {'stem': 'conv1', 'stem_bn': 'bn1'},
    'resnet18_bottleneck': {'stem': 'conv1', 'stem_bn': 'bn1'},
    'wide_resnet': {'stem': 'conv1', 'final_bn': 'bn1'},
    'small_cnn': {name: name for name in ('conv0', 'bn0', 'conv1', 'bn1', 'conv2', 'bn2')},
}
_SHORTCUTS = {'shortcut': 'shortcut.0', 'shortcut_conv': 'shortcut.0', 'shortcut_bn': 'shortcut.1'}
_DATA_PARALLEL_PREFIX = 'module.'
_COUNTER = 'num_batches_tracked'

# One PyTorch tensor: its key, the Flax leaf it maps to ((collection, *module path, leaf name), or None for
# the BatchNorm batch counter) and how its axes map: 'conv' OIHW <-> HWIO, 'linear' [out, in] <-> [in, out].
Entry = Tuple[str, Optional[Tuple[str, ...]], str]


def _check_model(model_name: str, layout: Optional[str]) -> str:
  """Returns the layout to use (the default when None); ValueError for unsupported names."""
  if model_name not in LAYOUTS:
    raise ValueError(f'model {model_name!r} has no PyTorch layout; supported: {", ".join(LAYOUTS)}')
  layout = layout or next(iter(LAYOUTS[model_name]))
  if layout not in LAYOUTS[model_name]:
    raise ValueError(f'layout {layout!r} is not one of {model_name}: {", ".join(LAYOUTS[model_name])}')
  return layout


_TORCH_ORDER = ('weight', 'bias', 'running_mean', 'running_var', _COUNTER)  # Within a module.


def _natural(key: str):
  """Sort key: modules in natural order (layer2.10 after layer2.9), tensors in PyTorch's order within one."""
  module, name = key.rsplit('.', 1)
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', module)] + [_TORCH_ORDER.index(name)]


def _block_prefix(model_name: str, index: int, per_stage: int) -> str:
  stage, position = divmod(index, per_stage)
  if model_name == 'wide_resnet':
    return f'block{stage + 1}.layer.{position}'
  return f'layer{stage + 1}.{position}'


def _torch_module(model_name: str, head: str, path: Tuple[str, ...], per_stage: int) -> str:
  """The PyTorch module name of a Flax module path, e.g. ('PreActBlock_3', 'Conv_1') -> 'layer2.1.conv2'."""
  if path == ('Head_0', 'head'):
    return head
  if len(path) == 1:
    return _TOP_LEVEL[model_name][path[0]]
  block, layer = path
  prefix = _block_prefix(model_name, int(block.rsplit('_', 1)[1]), per_stage)
  if layer in _SHORTCUTS:
    name = 'convShortcut' if model_name == 'wide_resnet' else _SHORTCUTS[layer]
  else:  # Conv_k -> conv{k+1}, BatchNorm_k -> bn{k+1}: both codes number layers in call order.
    kind, number = layer.rsplit('_', 1)
    name = {'Conv': 'conv', 'BatchNorm': 'bn'}[kind] + str(int(number) + 1)
  return f'{prefix}.{name}'


def _entries(model_name: str, layout: str, shapes: Mapping[Tuple[str, ...], Any],
             per_stage: int) -> List[Entry]:
  """Every PyTorch key of the model, in natural key order, from the flat Flax shapes {(collection, ...): .}."""
  head = LAYOUTS[model_name][layout]
  entries = []
  for (collection, *path, leaf) in shapes:
    module = _torch_module(model_name, head, tuple(path), per_stage)
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
  """Flat {(collection, *path, leaf): ShapeDtypeStruct} of our model, without allocating weights."""
  model = models.create_model(model_name, **model_kwargs)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return flax.traverse_util.flatten_dict(variables)


def _per_stage(model_name: str, model_kwargs: Dict[str, Any]) -> int:
  if model_name == 'wide_resnet':
    return (model_kwargs.get('depth', 34) - 4) // 6
  return 2  # Every ResNet-18 here has [2, 2, 2, 2] blocks.


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
  if layout is None and model_name in LAYOUTS:  # The first layout whose classifier key is present.
    layout = next((name for name, head in LAYOUTS[model_name].items() if f'{head}.weight' in state_dict), None)
  layout = _check_model(model_name, layout)
  inferred = _infer_torch_kwargs(model_name, LAYOUTS[model_name][layout], state_dict)
  model_kwargs = {'num_classes': 10, **inferred, **model_kwargs}
  shapes = _expected_shapes(model_name, model_kwargs)
  entries = _entries(model_name, layout, shapes, _per_stage(model_name, model_kwargs))
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
  layout = _check_model(model_name, layout)
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
  shapes = _expected_shapes(model_name, model_kwargs)
  for path, shape in shapes.items():
    if path not in flat:
      raise ValueError(f'variables are missing {"/".join(path)} (expected shape {shape.shape})')
    if np.shape(flat[path]) != shape.shape:
      raise ValueError(f'variables {"/".join(path)} has shape {np.shape(flat[path])}, expected {shape.shape}')
  for path in flat:
    if path not in shapes:
      raise ValueError(f'variables have unexpected {"/".join(path)} for {model_name}')
  state_dict = {}
  for key, flax_key, transform in _entries(model_name, layout, shapes, _per_stage(model_name, model_kwargs)):
    if transform == 'counter':
      state_dict[key] = np.zeros((), np.int64)
    else:
      state_dict[key] = np.array(_to_torch_axes(np.asarray(flat[flax_key]), transform), order='C')
  return state_dict


# ----------------------------------------------------------------------------------------------------- CLI
_MODEL = flags.DEFINE_string('model', None, f'Our model name: {", ".join(LAYOUTS)}.')
_LAYOUT = flags.DEFINE_string('layout', None, 'PyTorch key layout (default: detected / the first listed).')
_FROM_TORCH = flags.DEFINE_string('from_torch', None, 'A PyTorch state_dict file (.pt / .pth / .model).')
_TO = flags.DEFINE_string('to', None, 'Directory to create with an Orbax StandardSave of {params, batch_stats}.')
_FROM_FLAX = flags.DEFINE_string('from_flax', None, 'An Orbax directory written by --to, or a checkpoint `state`.')
_TO_TORCH = flags.DEFINE_string('to_torch', None, 'The PyTorch state_dict file to write.')


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise RuntimeError(f'reading or writing PyTorch files needs torch ({error}); pip install torch') from None
  return torch


def load_torch_file(path: str) -> Dict[str, np.ndarray]:
  """A state_dict saved with torch.save (or a dict holding one under 'state_dict'), as numpy arrays."""
  loaded = _torch().load(path, map_location='cpu', weights_only=True)
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
    checkpointer.save(os.path.abspath(directory), {name: variables[name] for name in ('params', 'batch_stats')})
    checkpointer.wait_until_finished()


def load_variables(directory: str) -> Dict[str, Any]:
  """{'params', 'batch_stats'} (numpy) of a `save_variables` directory or a training checkpoint's `state`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(os.path.abspath(directory))
  return {name: restored[name] for name in ('params', 'batch_stats') if name in restored}


def _run() -> None:
  if not _MODEL.value:
    raise ValueError(f'--model is required; one of {", ".join(LAYOUTS)}')
  _check_model(_MODEL.value, _LAYOUT.value)
  if bool(_FROM_TORCH.value) == bool(_FROM_FLAX.value):
    raise ValueError('give exactly one of --from_torch (with --to) and --from_flax (with --to_torch)')
  if _FROM_TORCH.value:
    if not _TO.value or _TO_TORCH.value:
      raise ValueError('--from_torch needs --to=DIR (and no --to_torch)')
    target = os.path.abspath(_TO.value)
    if os.path.exists(target):
      raise ValueError(f'--to={_TO.value} already exists; give a new directory')
    save_variables(torch_to_flax(load_torch_file(_FROM_TORCH.value), _MODEL.value, _LAYOUT.value), target)
    print(f'wrote {target}')
  else:
    if not _TO_TORCH.value or _TO.value:
      raise ValueError('--from_flax needs --to_torch=FILE (and no --to)')
    if not os.path.isdir(_FROM_FLAX.value):
      raise ValueError(f'--from_flax={_FROM_FLAX.value} is not a directory')
    save_torch_file(flax_to_torch(load_variables(_FROM_FLAX.value), _MODEL.value, _LAYOUT.value), _TO_TORCH.value)
    print(f'wrote {_TO_TORCH.value}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a save at INFO.
  try:
    _run()
  except (ValueError, RuntimeError, OSError) as error:
    print(f'rpat_jax.convert: error: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
