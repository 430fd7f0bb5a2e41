"""The device mesh, its shardings, and global arrays built from what each process reads.

One 1-D mesh over every device of every process, axis 'data' (jit + NamedSharding: the job `pmap` did).
The train state is replicated; batches and the on-device datasets are sharded over 'data'. Under jit a
BatchNorm mean over a sharded batch is a mean over the global batch, so N devices compute what one
device computes on that batch. Each process builds its part of a global array from the rows its own
devices hold (`rows_to_global`), so no process reads the whole dataset.
"""

from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rpat_jax.sharding import devices

DATA_AXIS = 'data'
PADDING = -1  # A row id that is no row: zeros in the arrays, never selected.


def make_mesh() -> Mesh:
  """The 1-D 'data' mesh over `devices.current()` (every device of the run, or a compile target's)."""
  # Auto axes: shardings are constraints that XLA propagates (the jit + NamedSharding model).
  return jax.make_mesh((devices.count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices.current())


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Axis `axis` (the batch) split over the 'data' axis; other axes whole."""
  return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA_AXIS))


def padded_rows(count: int, multiple: int) -> np.ndarray:
  """Row ids 0..count-1 followed by PADDING up to a multiple of `multiple`."""
  total = -(-count // multiple) * multiple
  return np.where(np.arange(total) < count, np.arange(total), PADDING)


def rows_to_global(row_ids: np.ndarray, sharding: NamedSharding,
                   fetch: Callable[[np.ndarray], Tuple[np.ndarray, ...]]) -> Tuple[jax.Array, ...]:
  """Global arrays of shape row_ids.shape + item shape, laid out by `sharding` over the row-id axes.

  row_ids: int array of dataset rows (PADDING = a zero item). fetch(rows) -> arrays whose leading axis
  follows `rows` (e.g. (images, labels)); it is called once, with the sorted rows held by this process's
  devices only.
  """
  needed = rows_held_by(row_ids, sharding, jax.process_index())
  parts = fetch(needed)

  def make(part):
    def block(index):
      ids = row_ids[index[:row_ids.ndim]]
      out = part[np.searchsorted(needed, np.maximum(ids, 0))] if len(needed) else np.zeros(
          ids.shape + part.shape[1:], part.dtype)
      out[ids == PADDING] = 0
      return out
    return jax.make_array_from_callback(row_ids.shape + part.shape[1:], sharding, block)

  return tuple(make(part) for part in parts)


def rows_held_by(row_ids: np.ndarray, sharding: NamedSharding, process_index: int) -> np.ndarray:
  """The sorted dataset rows (no PADDING) that the devices of process `process_index` hold under
  `sharding`: what that process reads. Works for any process of the mesh, so `aot` checks a pod's plan."""
  held = [row_ids[index].ravel() for device, index in sharding.devices_indices_map(row_ids.shape).items()
          if device.process_index == process_index]
  needed = np.unique(np.concatenate(held)) if held else np.zeros(0, row_ids.dtype)
  return needed[needed != PADDING]


def host_batch(value: np.ndarray, mesh: Mesh) -> jax.Array:
  """A batch that every process holds whole on the host (evaluation points), split over 'data'."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, batch_sharded(mesh), lambda index: value[index])


def per_point(fn, x: np.ndarray, y: np.ndarray, batch_size: int, mesh: Mesh) -> np.ndarray:
  """fn(x_batch, y_batch, start) -> [B] results for host points x, y, in batches of `batch_size` (the last
  padded by repeating its last point, so one compile serves all) split over the mesh; [N] numpy."""
  out = None
  for start in range(0, len(x), batch_size):
    index = np.arange(start, min(start + batch_size, len(x)))
    padded = np.concatenate([index, np.full(batch_size - len(index), index[-1])])
    result = np.asarray(fn(host_batch(x[padded], mesh), host_batch(y[padded], mesh), start))[:len(index)]
    if out is None:
      out = np.empty((len(x),) + result.shape[1:], result.dtype)
    out[index] = result
  return out


def gather_rows(mesh: Mesh, images: jax.Array, labels: jax.Array, chosen: jax.Array):
  """images[chosen], labels[chosen] for row-sharded arrays and replicated row ids, sharded like a batch.

  Each device contributes the chosen rows it holds (zeros elsewhere); one reduce-scatter sums the
  contributions and leaves each device its slice of the batch. The cost is one batch of uint8 pixels
  per device, not the dataset, and the batch is what a single device would select, whatever the mesh.
  """
  def local(image_shard, label_shard, rows):
    count = image_shard.shape[0]
    offset = rows - jax.lax.axis_index(DATA_AXIS) * count
    mine = (offset >= 0) & (offset < count)
    safe = jnp.clip(offset, 0, count - 1)
    picked_images = jnp.where(mine.reshape((-1,) + (1,) * (image_shard.ndim - 1)), image_shard[safe], 0)
    picked_labels = jnp.where(mine, label_shard[safe], 0)
    scatter = lambda v: jax.lax.psum_scatter(v, DATA_AXIS, scatter_dimension=0, tiled=True)
    return scatter(picked_images), scatter(picked_labels)

  spec = PartitionSpec(DATA_AXIS)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, PartitionSpec()), out_specs=(spec, spec))(
      images, labels, chosen)
