"""Ahead-of-time compiles of a run's programs for a TPU slice or GPU host, on a machine without one.

  python -m rpat_jax.aot --config=configs/wrn.py --target=v5e:4x4,h100x8 --out=wrn.json

The compile-only devices come from `jax.experimental.topologies` (libtpu, or the CUDA plugin with a target
description: requirements-aot.txt); the programs are the run's own, built over those devices
(`sharding.devices.building_for`). Each row: bytes per device against the device's memory, the largest
per-device batch that fits (a search over compiles), FLOPs per image, the collectives and, where the
compiler counts bytes, a roofline estimate of the time. Estimates are the compiler's, never measurements.
"""

import os

import jax

# The compile-only devices need no accelerator, and JAX must not look for one when it starts a backend (an
# installed TPU runtime or CUDA plugin would). Before any backend starts; a user's JAX_PLATFORMS stays.
if not os.environ.get('JAX_PLATFORMS'):
  jax.config.update('jax_platforms', 'cpu')
