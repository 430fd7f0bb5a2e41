"""Data parallelism over every device of every host: the mesh, shardings, row-sharded datasets, and
jax.distributed."""
