"""The programs a run and its evaluation compile, built by the run's own code over the target's devices and
lowered against shapes: nothing is computed, no dataset is read.

Each `Program` lowers when asked (inside `devices.building_for(target)`): the train step by
`train.jit_epoch_step` over the on-device dataset's layout (`Experiment.train_layout`), the per-epoch
evaluation by `train.jit_evaluate`, PGD-20 by `evaluate.pgd.pgd_programs`, APGD by
`autoattack.compacted.apgd_step` on `ensemble.attack_setup`'s forms, as `python -m rpat_jax.evaluate` runs
them. The evaluation's programs close over the model's weights, so they are built with random weights of
the model's shapes (the values do not change the program, only its constants).
"""

import dataclasses
from typing import Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rpat_jax import attacks
from rpat_jax import data
from rpat_jax import experiment as experiment_lib
from rpat_jax import seeds
from rpat_jax import steps
from rpat_jax import train
from rpat_jax.autoattack import apgd
from rpat_jax.autoattack import compacted
from rpat_jax.autoattack import ensemble
from rpat_jax.config import validation
from rpat_jax.cpu import hoisted_jit
from rpat_jax.evaluate import pgd
from rpat_jax.sharding import parallel

TRAIN = 'train'  # Programs whose batch is config.batch_size.
EVAL = 'eval'  # Programs whose batch is the evaluation's points per call.
APGD_ITERATIONS = 100  # The standard version's n_iter: the step's schedule depends on it.


@dataclasses.dataclass(frozen=True)
class Program:
  name: str
  kind: str  # TRAIN or EVAL: which batch it runs at.
  images: int  # Images per call (all devices), for the per-image figures.
  lower: Callable[[], jax.stages.Lowered]
  note: str = ''
  counted: bool = True  # False: its work is in loops, whose bodies XLA's cost analysis counts once.


def _sharded(shape, dtype, sharding):
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def _random_like(tree, seed: int = 0):
  """Host arrays of `tree`'s shapes and dtypes: weights for a program that closes over them."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype), tree)


def eval_points(batch_size: int, device_count: int) -> int:
  """Points per attack call as `python -m rpat_jax.evaluate` rounds them: up to a multiple of the devices."""
  return -(-batch_size // device_count) * device_count


def training_programs(experiment: experiment_lib.Experiment) -> List[Program]:
  """The train step (and, for a delayed RPAT, the step before it starts) and the per-epoch evaluation."""
  config, info = experiment.config, experiment.info
  state = experiment.abstract_state()
  rows, sharding = experiment.train_layout()
  images = _sharded(rows.shape + tuple(info.image_shape), jnp.uint8, sharding)
  labels = _sharded(rows.shape, jnp.int32, sharding)
  order = train.abstract_order(experiment)
  last = steps.rpat_active(config, config.epochs - 1)
  images_per_step = config.batch_size * seeds.count(config)  # Every seed's batch.
  found = [Program('train_step', TRAIN, images_per_step,
                   lambda: train.jit_epoch_step(experiment, with_rpat=last).lower(state, images, labels, order),
                   'with RPAT' if last else '')]
  if last and not steps.rpat_active(config, 0):
    found.append(Program('train_step_before_rpat', TRAIN, images_per_step,
                         lambda: train.jit_epoch_step(experiment, with_rpat=False).lower(state, images, labels, order),
                         f'epochs before rpat.start_epoch={config.rpat.start_epoch}'))
  test_rows, test_sharding = experiment.test_layout()
  test = (_sharded(test_rows.shape + tuple(info.image_shape), jnp.uint8, test_sharding),
          _sharded(test_rows.shape, jnp.int32, test_sharding), _sharded(test_rows.shape, jnp.bool_, test_sharding))
  found.append(Program('evaluate', TRAIN, int(test_rows.size),
                       lambda: train.jit_evaluate(experiment).lower(state, *test),
                       f'{test_rows.shape[0]} batches of {test_rows.shape[1]}, PGD-{config.eval.pgd_steps}; '
                       'no FLOPs or time: its batches and PGD steps are loops', counted=False))
  return found


def evaluation_programs(experiment: experiment_lib.Experiment, points: int, *,
                        weights_as_arguments: bool = False) -> List[Program]:
  """PGD-20's step, APGD-CE's and APGD-T's iteration and a bare jitted input gradient of the same model at
  `points` per call, as the evaluation binary builds them (its model in `model.dtype`).

  weights_as_arguments: also APGD-CE's iteration with the weights passed as arguments instead of closed
  over (what `hoisted_jit` does on a CPU), to decide that form from the compiles.
  """
  config, info, mesh = experiment.config, experiment.info, experiment.mesh
  abstract = experiment.abstract_state()
  params, batch_stats = _random_like(abstract.params), _random_like(abstract.batch_stats, seed=1)
  forward = experiment.forward
  logits_fn = lambda images: forward.eval_logits(params, batch_stats, images).astype(jnp.float32)
  batched = parallel.batch_sharded(mesh)
  image_shape = (points,) + tuple(info.image_shape)
  x = _sharded(image_shape, jnp.float32, batched)
  y = _sharded((points,), jnp.int32, batched)
  threat = config.attack
  found = []

  programs = pgd.pgd_programs(logits_fn, threat, seed=0)
  found.append(Program('pgd20_step', EVAL, points, lambda: programs.step.lower(x, y, x, loss='ce'),
                       'one of PGD-20\'s steps'))

  attack_logits_fn, _, gradient_logits_fn = ensemble.attack_setup(logits_fn, points)
  carry = jax.tree.map(lambda leaf: _sharded(leaf.shape, leaf.dtype, batched), apgd.carry_shapes(image_shape))
  index = _sharded((points,), jnp.int32, batched)

  def apgd_program(loss: str, fn=gradient_logits_fn):
    step = apgd_step_fn(fn, threat, loss)
    consts = {'x': x, 'y': y, 'index': index}
    if loss == 'dlr-targeted':
      consts['target'] = y
    return lambda: hoisted_jit.jit(step).lower(consts, carry, 0, x)

  found.append(Program('apgd_ce_step', EVAL, points, apgd_program('ce'), 'one APGD-CE iteration'))
  found.append(Program('apgd_t_step', EVAL, points, apgd_program('dlr-targeted'), 'one APGD-T iteration'))
  bare = jax.jit(jax.grad(lambda images, labels: attacks.cross_entropy_sum(attack_logits_fn(images), labels)))
  found.append(Program('gradient', EVAL, points, lambda: bare.lower(x, y),
                       'a bare jitted input gradient of the same model (APGD\'s yardstick)'))
  if weights_as_arguments:
    # In the model's compute dtype: hoisted_jit's prologue casts them once per function (it also folds the
    # input gradient's kernel transposes, which XLA's layout assignment does for itself on a TPU).
    compute = jnp.dtype(config.model.dtype)
    variables = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, compute if jnp.issubdtype(leaf.dtype, jnp.floating)
                                          else leaf.dtype, sharding=leaf.sharding),
        {'params': abstract.params, 'batch_stats': abstract.batch_stats})

    def with_arguments(variables, consts, carry_, i, x_start):
      fn = lambda images: forward.eval_logits(variables['params'], variables['batch_stats'], images).astype(
          jnp.float32)
      return apgd_step_fn(fn, threat, 'ce')(consts, carry_, i, x_start)

    found.append(Program('apgd_ce_step_weights_as_arguments', EVAL, points,
                         lambda: jax.jit(with_arguments).lower(variables, {'x': x, 'y': y, 'index': index}, carry,
                                                               0, x),
                         'the same iteration with the weights as arguments, cast once (hoisted_jit\'s form)'))
  return found


def apgd_step_fn(logits_fn, threat, loss: str):
  return compacted.apgd_step(logits_fn, norm=threat.norm, eps=threat.eps, loss=loss, n_iter=APGD_ITERATIONS,
                             rho=0.75)


def experiment_for(config: ml_collections.ConfigDict) -> experiment_lib.Experiment:
  """The run's experiment over the current devices, with the dataset's published sizes (nothing read).
  Raises the run's own one-line ConfigError for a bad config (a batch the devices do not divide)."""
  return experiment_lib.create(config, info=data.published_info(config.data))


def check_dataset(config: ml_collections.ConfigDict) -> None:
  """ConfigError (one line) for a dataset whose sizes `aot` does not know without reading it."""
  if config.data.name != 'synthetic' and config.data.name not in data.PUBLISHED:
    raise validation.ConfigError(f'data.name={config.data.name!r}: aot knows the sizes of synthetic and '
                                 f'{", ".join(data.PUBLISHED)} only; allowed: one of those')


def all_programs(config: ml_collections.ConfigDict, *, eval_batch_size: int, only: Optional[List[str]] = None,
                 weights_as_arguments: bool = False) -> Tuple[experiment_lib.Experiment, List[Program]]:
  """The experiment of `config` over the current devices, and every program of its run and evaluation
  (`only`: those names)."""
  experiment = experiment_for(config)
  found = training_programs(experiment)
  if only is None or set(only) - {p.name for p in found}:  # Evaluation programs asked for.
    points = eval_points(eval_batch_size, experiment.mesh.size)
    found += evaluation_programs(experiment, points, weights_as_arguments=weights_as_arguments)
  return experiment, [p for p in found if only is None or p.name in only]

