"""Times the evaluation: PGD-20 and AutoAttack on N points, ours and (with --torch) the official code's.

Both sides attack the same weights on the same points: ours (`rpat_jax.evaluate`'s PGD-20 and our
AutoAttack port) and PyTorch (the twin network with our weights converted; an advertorch-style PGD-20, and
the official `pyautoattack`). The weights are a training checkpoint (`workdir`) or the config's initial
weights; the points are the first N test images when the dataset is prepared, else uniform noise. An
untrained network gets its own predictions as labels, so every point is attacked. AutoAttack's work
depends on how robust the model is (each attack only runs on the points still robust), so the row
records the robust accuracy after each attack, and both sides' work: the images through the network,
forward and backward (`aa_evaluations`; the official side's counted by hooks on the PyTorch model). Ours
is timed twice: the first call includes compilation, the second reuses the executables (JAX's
persistent compilation cache).
"""

import tempfile
import time
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rpat_jax import attacks
from rpat_jax import autoattack
from rpat_jax import data
from rpat_jax import evaluate
from rpat_jax import experiment as experiment_lib
from rpat_jax.bench import report
from rpat_jax.bench import train_bench


def _points(config, n_examples: int, side: int, classes: int):
  """(x [N, H, W, 3] float32 in [0, 1], dataset labels or None, description)."""
  try:
    prepared = config.data.name == 'synthetic' or data.dataset_available(config.data.name, config.data.data_dir)
  except ImportError:  # No tensorflow-datasets on this machine: noise, as for a dataset not prepared.
    prepared = False
  if prepared:
    info = data.describe(config.data)
    count = min(n_examples, info.num_test)
    images, labels = data.load_rows(config.data, 'test', np.arange(count))
    return images.astype(np.float32) / 255.0, labels.astype(np.int32), f'{config.data.name} test[:{count}]'
  rng = np.random.default_rng(config.seed)
  x = rng.uniform(0, 1, (n_examples, side, side, 3)).astype(np.float32)
  return x, None, f'uniform noise {n_examples} x {side}x{side}x3 ({config.data.name} is not prepared here)'


def _variables(config, workdir: Optional[str], checkpoint: str, classes: int, image_shape):
  """(forward, {'params', 'batch_stats'}, description) of a checkpoint, or of the config's initial weights."""
  count = train_bench.dataset_shape(config.data)[0]
  info = data.DatasetInfo(num_train=count, num_test=count, image_shape=tuple(image_shape), num_classes=classes,
                          name=config.data.name)  # The shapes the state needs; no data is read.
  if workdir:
    forward, params, batch_stats, epoch = evaluate.restore_variables(config, workdir, checkpoint=checkpoint,
                                                                      info=info)
    return forward, {'params': params, 'batch_stats': batch_stats}, f'{workdir} epoch {epoch}'
  experiment = experiment_lib.create(config, info=info, validate=False)
  state = experiment.init_state()
  return (experiment.forward, {'params': state.params, 'batch_stats': state.batch_stats},
          f'initial weights (seed {config.seed})')


def _timed(fn):
  started = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - started


def _compilation_cache():
  """Turns on JAX's persistent compilation cache (a temporary directory unless one is configured), so the
  second AutoAttack call, whose attacks are new Python closures, reuses the first call's executables."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', tempfile.mkdtemp(prefix='rpat_bench_cache_'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def _official(config, variables, classes: int, x, y, batch_size: int, aa_version: str, attack_names,
              names) -> Dict:
  """PGD-20 (advertorch's form, in PyTorch) and pyautoattack on the twin network; per-point results."""
  import torch  # pylint: disable=import-outside-toplevel
  from pyautoattack import AutoAttack  # pylint: disable=import-outside-toplevel
  from rpat_jax.bench import torch_step  # pylint: disable=import-outside-toplevel
  device = torch_step.default_device()
  model = torch_step.build_model(config.model, classes, jax.device_get(variables), device).eval()
  xt = torch.as_tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)  # pyautoattack views grads.
  yt = torch.as_tensor(y.astype(np.int64)).to(device)
  generator = torch.Generator(device=device).manual_seed(config.seed)
  attack = config.attack

  def pgd20():
    robust = []
    for start in range(0, len(x), batch_size):
      xb, yb = xt[start:start + batch_size], yt[start:start + batch_size]
      x_adv = torch_step.pgd(model, xb, yb, norm=attack.norm, eps=attack.eps, step_size=attack.step_size,
                             steps=attacks.EVAL_PGD_STEPS, generator=generator, parameter_gradients=True)
      with torch.no_grad():
        robust.append((model(x_adv).argmax(1) == yb).cpu().numpy())
    torch_step.synchronize(device)
    return np.concatenate(robust)

  norm = autoattack.ensemble.canonical_norm(attack.norm)
  adversary = AutoAttack(model, norm=norm, eps=attack.eps, version=aa_version, seed=config.seed, device=device,
                         attacks=list(names) if aa_version == 'custom' else None)

  counts = {'forward': 0, 'backward': 0}

  def count_images(module, inputs, output):  # Every image through the network, as our Engine counts.
    del module
    counts['forward'] += int(inputs[0].shape[0])
    if output.requires_grad:
      output.register_hook(lambda grad: counts.__setitem__('backward', counts['backward'] + int(grad.shape[0])))

  def run_aa():
    hook = model.register_forward_hook(count_images)
    try:
      x_adv, _ = adversary.run_standard_evaluation(xt, yt, batch_size=batch_size)
    finally:
      hook.remove()
    with torch.no_grad():
      robust = [(model(x_adv[s:s + batch_size]).argmax(1) == yt[s:s + batch_size]).cpu().numpy()
                for s in range(0, len(x), batch_size)]
    return np.concatenate(robust)

  pgd_robust, pgd_seconds = _timed(pgd20)
  aa_robust, aa_seconds = _timed(run_aa)
  return {'device': str(device), 'versions': {'torch': torch.__version__, **report.versions(('pyautoattack',))},
          'pgd20_seconds': pgd_seconds, 'pgd20_acc': float(pgd_robust.mean()), 'aa_seconds': aa_seconds,
          'aa_acc': float(aa_robust.mean()), 'aa_robust': aa_robust, 'pgd20_robust': pgd_robust,
          'aa_evaluations': _evaluations(counts, len(x))}


def _evaluations(total: Dict[str, int], n_points: int) -> Dict:
  """Images through the network in all and per point evaluated, forward and backward."""
  return {'total': dict(total), 'per_point': {kind: count / n_points for kind, count in total.items()}}


def run(config, *, n_examples: int, batch_size: int, dtype: str, aa_version: str, workdir: Optional[str],
        checkpoint: str, with_torch: bool, attack_names=None, aa_calls: int = 2) -> Dict:
  """The result row: our seconds (first call with compilation, then compiled), accuracies, and with
  `with_torch` the official side's seconds, accuracies, our speed-ups and the per-point agreement.

  aa_calls: 2 times AutoAttack twice (first call, then compiled); 1 only once, for rows where one call
  takes most of an hour and compilation is a small part of it (`aa_seconds` and `aa_speedup` are then
  None, the first call's figures stand)."""
  if aa_calls not in (1, 2):
    raise ValueError(f'aa_calls must be 1 or 2; got {aa_calls}')
  names = autoattack.ensemble.resolve_attacks(aa_version, attack_names)  # Bad names fail before any work.
  train_bench.bench_config(config, batch_size=1, dtype=dtype)  # Validates the model and threat keys.
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = dtype
  _, side, classes = train_bench.dataset_shape(config.data)
  x, labels, points = _points(config, n_examples, side, classes)
  forward, variables, weights = _variables(config, workdir, checkpoint, classes, x.shape[1:])
  logits_fn = lambda images: forward.eval_logits(variables['params'], variables['batch_stats'],
                                                 images).astype(jnp.float32)
  if labels is None or not workdir:  # Untrained weights: their own predictions, so every point is attacked.
    labels = np.asarray(jax.jit(logits_fn)(x)).argmax(1).astype(np.int32)
    label_note = "the model's own predictions"
  else:
    label_note = 'the dataset labels'
  devices = jax.device_count()
  batch_size = -(-min(batch_size, len(x)) // devices) * devices
  attack = config.attack

  _compilation_cache()
  robust = evaluate.make_robustness(logits_fn, attack, seed=config.seed)
  pgd_first = _timed(lambda: robust(x, labels, batch_size))[1]
  pgd_robust, pgd_seconds = _timed(lambda: robust(x, labels, batch_size))
  aa = lambda: autoattack.evaluate(logits_fn, x, labels, norm=attack.norm, eps=attack.eps, version=aa_version,
                                   seed=config.seed, batch_size=batch_size, attacks=attack_names)
  ours, aa_first = _timed(aa)
  aa_seconds = None
  if aa_calls == 2:
    ours, aa_seconds = _timed(aa)
  row = {
      'what': 'eval', 'model': config.model.name, 'weights': weights, 'points': points, 'labels': label_note,
      'n_examples': len(x), 'batch_size': batch_size, 'dtype': dtype, 'norm': attack.norm, 'eps': attack.eps,
      'aa_version': aa_version, 'attacks': list(names), 'device': report.device_info(),
      'versions': report.versions(), 'pgd20_seconds': pgd_seconds, 'pgd20_seconds_first_call': pgd_first,
      'pgd20_acc': float(pgd_robust.mean()), 'aa_seconds': aa_seconds, 'aa_seconds_first_call': aa_first,
      'aa_acc': ours['robust_acc'], 'clean_acc': ours['clean_acc'], 'per_attack': ours['per_attack'],
      'aa_evaluations': ours['evaluations'], 'official': None,
  }
  if with_torch:
    official = _official(config, variables, classes, x, labels, batch_size, aa_version, attack_names, names)
    row['official'] = {
        **{key: value for key, value in official.items() if not key.endswith('_robust')},
        'aa_speedup': official['aa_seconds'] / aa_seconds if aa_seconds else None,
        'aa_speedup_first_call': official['aa_seconds'] / aa_first,
        'pgd20_speedup': official['pgd20_seconds'] / pgd_seconds,
        'aa_agreement': float(np.mean(official['aa_robust'] == ours['robust'])),
        'pgd20_agreement': float(np.mean(official['pgd20_robust'] == pgd_robust)),
    }
  return row
