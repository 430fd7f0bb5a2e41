"""One set-up from a config, for the trainer, the evaluation, the benchmark and the tests.

`create(config)` resolves and checks the config, reads the dataset's description (sizes, image shape,
classes; no image decoded), builds the mesh over every device, the model's forward pass and the
optimiser. The `Experiment` it returns makes the replicated initial train state and places the datasets
on the devices (each process reading only the rows its devices hold).
"""

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from rpat_jax.config import validation
from rpat_jax import data
from rpat_jax import optim
from rpat_jax import seeds
from rpat_jax.sharding import devices
from rpat_jax.sharding import parallel
from rpat_jax import steps
from rpat_jax.config import threats
from rpat_jax.forward import Forward


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: ml_collections.ConfigDict  # Resolved (`threats.resolve`) and validated.
  info: data.DatasetInfo
  mesh: Mesh
  forward: Forward
  steps_per_epoch: int

  def _create_state(self):
    tx = optim.make_optimizer(self.config, self.steps_per_epoch)  # Outside the trace: the state keeps it.
    create = lambda seed=None: steps.create_train_state(self.config, self.forward, tx, self.info.image_shape, seed)
    if not seeds.stacked(self.config):
      return create
    return lambda: jax.vmap(create)(jnp.asarray(seeds.values(self.config), jnp.int32))

  def state_sharding(self) -> jax.sharding.NamedSharding:
    """The train state's layout: replicated, or split by seed over the mesh (`seeds.layout`: 'seeds')."""
    if seeds.layout(self.config, self.mesh.size) == 'seeds':
      return parallel.batch_sharded(self.mesh)
    return parallel.replicated(self.mesh)

  def init_state(self) -> steps.TrainState:
    """The initial train state of `config.seed` (or of each of a K-seed run's seeds, stacked), laid out by
    `state_sharding` (the structure a checkpoint restores into)."""
    return jax.jit(self._create_state(), out_shardings=self.state_sharding())()

  def abstract_state(self, sharding: Optional[jax.sharding.Sharding] = None) -> steps.TrainState:
    """`init_state()`'s shapes and dtypes, nothing computed (what `aot` compiles against and a checkpoint
    restores into), laid out by `sharding` (default: `state_sharding`)."""
    sharding = sharding or self.state_sharding()
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        jax.eval_shape(self._create_state()))

  def train_layout(self) -> Tuple[np.ndarray, jax.sharding.NamedSharding]:
    """Row ids of the on-device training set (N padded to a multiple of the device count with PADDING,
    never selected) and their sharding: split by rows over the mesh."""
    return parallel.padded_rows(self.info.num_train, self.mesh.size), parallel.batch_sharded(self.mesh)

  def test_layout(self) -> Tuple[np.ndarray, jax.sharding.NamedSharding]:
    """Row ids [N_b, B] of the per-epoch evaluation subset (the first `eval.num_examples` test images,
    0 = all, padded) and their sharding: split over B."""
    rows = eval_rows(self.info.num_test, self.config.eval.num_examples, self.config.eval.batch_size)
    return rows, parallel.batch_sharded(self.mesh, axis=1)

  def train_data(self) -> Tuple[jax.Array, jax.Array]:
    """The training set on the devices: uint8 images [N', H, W, C] and int32 labels [N'] (`train_layout`)."""
    return parallel.rows_to_global(*self.train_layout(),
                                   lambda chosen: _images_and_labels(self.config.data, 'train', chosen))

  def test_data(self) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """The per-epoch evaluation subset as batches (`test_layout`): images [N_b, B, H, W, C], labels
    [N_b, B], mask [N_b, B] (False on padding)."""
    return parallel.rows_to_global(
        *self.test_layout(),
        lambda chosen: (*_images_and_labels(self.config.data, 'test', chosen), np.ones(len(chosen), bool)))


def eval_rows(num_test: int, num_examples: int, batch_size: int) -> np.ndarray:
  """Row ids [N_b, B] of the first `num_examples` test images (0 = all), padded with PADDING."""
  n = num_test if num_examples == 0 else min(num_examples, num_test)
  return parallel.padded_rows(n, batch_size).reshape(-1, batch_size)


def _images_and_labels(data_config, split: str, rows: np.ndarray):
  images, labels = data.load_rows(data_config, split, rows)
  return images, labels.astype(np.int32)


def create(config: ml_collections.ConfigDict, *, info: Optional[data.DatasetInfo] = None,
           validate: bool = True) -> Experiment:
  """The experiment of `config` on every device of every process.

  info: the dataset's description when the caller has it (default: `data.describe(config.data)`).
  validate: check the config (one-line `ConfigError`s, among them a batch larger than the training set)
  before anything is built; False for an evaluation, which only needs the model and the state's structure.
  """
  config = threats.resolve(config)
  if validate:
    validation.validate(config, devices.count(), data_on_disk=info is None)
  info = info or data.describe(config.data)
  steps_per_epoch = info.num_train // config.batch_size
  if validate and steps_per_epoch < 1:
    raise validation.ConfigError(
        f'batch_size={config.batch_size} exceeds the {info.num_train} training images; allowed: at most that')
  return Experiment(config=config, info=info, mesh=parallel.make_mesh(),
                    forward=Forward.from_config(config.model, info.num_classes),
                    steps_per_epoch=max(steps_per_epoch, 1))
