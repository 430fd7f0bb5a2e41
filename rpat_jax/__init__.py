"""rpat_jax: Robust Perception Adversarial Training (RPAT) in JAX/Flax."""

from rpat_jax import xla_cpu as _xla_cpu

# Before JAX starts its CPU backend (it reads XLA_FLAGS then): XLA's own convolutions, faster here.
_xla_cpu.prefer_eigen_convolutions()
