"""rpat_jax: Robust Perception Adversarial Training (RPAT) in JAX/Flax."""
