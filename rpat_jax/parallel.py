"""The device mesh and the two shardings the trainer uses (jit + NamedSharding, no pmap).

One 1-D mesh over every device of every process, axis 'data'. The train state and the on-device
dataset are replicated; each batch is sharded over 'data'. Under jit a BatchNorm mean over a sharded
batch is a mean over the global batch, so N devices compute what one device computes on that batch.
"""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def make_mesh() -> Mesh:
  # Auto axes: shardings are constraints that XLA propagates (the jit + NamedSharding model).
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the 'data' axis; other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
