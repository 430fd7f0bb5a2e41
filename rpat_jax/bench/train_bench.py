"""Times the trainer's compiled step (batch selection, augmentation, attack, objective, update).

The step is exactly the one `rpat_jax.main` runs (`train.make_epoch_step`), over a device-resident
dataset of random uint8 images shaped like the config's dataset, so no dataset has to be on disk: the
work of a step does not depend on the pixel values.
"""

import dataclasses
import time
from typing import Dict, Tuple

import jax
import ml_collections
import numpy as np

from rpat_jax.config import validation
from rpat_jax import data
from rpat_jax import experiment as experiment_lib
from rpat_jax import seeds
from rpat_jax.sharding import parallel
from rpat_jax.config import threats
from rpat_jax import train
from rpat_jax.bench import report

# (training images, image side, classes) of the datasets the configs name; others are described by TFDS.
DATASET_SHAPES = {
    'cifar10': (50000, 32, 10),
    'cifar10_jpeg': (50000, 32, 10),
    'cifar100': (50000, 32, 100),
    'tiny_imagenet': (100000, 64, 200),
}


def dataset_shape(data_config: ml_collections.ConfigDict) -> Tuple[int, int, int]:
  """(training images, image side, classes) of the config's dataset, without reading it."""
  if data_config.name == 'synthetic':
    synthetic = data_config.synthetic
    return synthetic.num_train, synthetic.image_size, synthetic.num_classes
  if data_config.name in DATASET_SHAPES:
    return DATASET_SHAPES[data_config.name]
  info = data.describe(data_config)
  return info.num_train, info.image_shape[0], info.num_classes


def bench_config(config: ml_collections.ConfigDict, batch_size: int, dtype: str,
                 num_train: int = 0) -> Tuple[ml_collections.ConfigDict, str]:
  """The config with the benchmark's batch size and dtype, its data replaced by on-device random images of
  the dataset's shape (`num_train` > 0 overrides the count); validated. Returns (config, data description)."""
  config = threats.resolve(config)  # An unlocked copy with the threat's budgets filled in.
  name = config.data.name
  count, side, classes = dataset_shape(config.data)
  count = num_train or count
  config.data.name = 'synthetic'
  config.data.synthetic.update(num_train=count, image_size=side, num_classes=classes)
  config.batch_size = batch_size
  config.model.dtype = dtype
  validation.validate(config, jax.device_count())
  if count < batch_size:
    raise validation.ConfigError(f'batch_size={batch_size} exceeds the {count} training images; '
                                        'allowed: at most the dataset size (or a larger --num_train)')
  return config, f'random uint8 images shaped like {name}: {count} x {side}x{side}x3, {classes} classes'


def _random_dataset(mesh, count: int, side: int, classes: int, seed: int):
  """uint8 images [count, side, side, 3] and int32 labels, made on the devices, sharded by rows."""
  sharding = parallel.batch_sharded(mesh)
  image_key, label_key = jax.random.split(jax.random.key(seed))
  images = jax.jit(lambda: jax.random.randint(image_key, (count, side, side, 3), 0, 256, 'int32').astype('uint8'),
                   out_shardings=sharding)()
  labels = jax.jit(lambda: jax.random.randint(label_key, (count,), 0, classes, 'int32'), out_shardings=sharding)()
  return images, labels


def _lowered_step(experiment, state, images, labels):
  return train.jit_epoch_step(experiment).lower(state, images, labels, train.abstract_order(experiment))


def step_flops(experiment, state, images, labels) -> Dict:
  """FLOPs of one step from XLA's cost analysis of the step with the attack loop unrolled.

  Returns {'compiled': FLOPs of the optimised program, 'lowered': of the program before optimisation}.
  The compiled count is the one reported; the lowered one is a cross-check (and the fallback when a
  backend's analysis of the compiled program leaves out library calls).
  """
  unrolled = ml_collections.ConfigDict(experiment.config.to_dict())
  unrolled.attack.unroll = True
  lowered = _lowered_step(dataclasses.replace(experiment, config=unrolled), state, images, labels)
  return {'lowered': report.cost_flops(lowered.cost_analysis()),
          'compiled': report.cost_flops(lowered.compile().cost_analysis())}


def run(config: ml_collections.ConfigDict, *, batch_size: int, dtype: str, steps_to_time: int, warmup: int,
        num_train: int = 0, count_flops: bool = True, profile_dir: str = '') -> Tuple[Dict, Dict]:
  """Compiles and times the step. Returns (the result row, context for a PyTorch twin: the initial
  variables, class count, image shape and the resolved config). `profile_dir`: afterwards, 3 more steps
  under `jax.profiler.trace` (open with TensorBoard's profile plugin or Perfetto)."""
  config, data_note = bench_config(config, batch_size, dtype, num_train)
  synthetic = config.data.synthetic
  count, side, classes = synthetic.num_train, synthetic.image_size, synthetic.num_classes
  experiment = experiment_lib.create(config)
  config, mesh = experiment.config, experiment.mesh
  state = experiment.init_state()
  initial = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  images, labels = _random_dataset(mesh, count, side, classes, config.seed)

  order = train.epoch_order(experiment)(state, 0)  # Per epoch in a run; the timed steps reuse one.
  started = time.perf_counter()
  lowered = _lowered_step(experiment, state, images, labels)
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - started
  flops = None
  if count_flops and config.attack.unroll:  # The timed program is already the unrolled one.
    flops = {'lowered': report.cost_flops(lowered.cost_analysis()),
             'compiled': report.cost_flops(compiled.cost_analysis())}
  elif count_flops:
    flops = step_flops(experiment, state, images, labels)

  for _ in range(warmup):
    state, metrics = compiled(state, images, labels, order)
  jax.block_until_ready((state, metrics) if warmup else state)
  seconds = []
  for _ in range(steps_to_time):
    started = time.perf_counter()
    state, metrics = compiled(state, images, labels, order)
    jax.block_until_ready((state, metrics))
    seconds.append(time.perf_counter() - started)
  if profile_dir:
    with jax.profiler.trace(profile_dir):
      for _ in range(3):
        state, metrics = compiled(state, images, labels, order)
      jax.block_until_ready((state, metrics))
  losses = np.asarray(metrics['loss'])  # [K] for K seeds.
  if np.isnan(losses).any():
    raise FloatingPointError('the benchmarked step gave a NaN loss')
  loss = float(losses.mean())

  stats = report.timing_stats(seconds)
  seed_count = seeds.count(config)
  images_per_second = seed_count * batch_size / (stats['median'] / 1e3)  # Every seed's images.
  device = report.device_info()
  flops_per_image, flops_source = None, None
  if flops:  # The compiled count, unless the backend's analysis lost most of it (then the lowered one).
    source = 'compiled' if flops['compiled'] >= 0.5 * flops['lowered'] else 'lowered'
    flops_per_image = flops[source] / (seed_count * batch_size)
    flops_source = f'XLA cost analysis of the {source} step, attack loop unrolled'
  peak = report.peak_flops(device['kind'], dtype)
  row = {
      'what': 'train', 'model': config.model.name, 'method': config.method, 'rpat': config.rpat.enabled,
      'attack': {'norm': config.attack.norm, 'steps': config.attack.steps, 'bn_mode': config.attack.bn_mode},
      'data': data_note, 'device': device, 'versions': report.versions(), 'batch_size': batch_size, 'dtype': dtype,
      'seeds': seed_count, 'seed_compute': seeds.compute(config) if seed_count > 1 else None,
      'compile_seconds': compile_seconds, 'step_ms': stats, 'images_per_second': images_per_second,
      'images_per_second_per_seed': images_per_second / seed_count,
      'memory': report.memory(compiled),
      'flops_per_image': flops_per_image,
      'flops_per_image_lowered': flops['lowered'] / (seed_count * batch_size) if flops else None,
      'flops_source': flops_source,
      'peak_flops_per_device': peak,
      'mfu': report.mfu(flops_per_image, images_per_second, peak, device['count']),
      'final_loss': loss,
  }
  context = {'config': config, 'variables': initial, 'num_classes': classes, 'image_shape': (side, side, 3)}
  return row, context
