"""Throughput benchmarks: `python -m rpat_jax.bench` (see __main__.py).

The JAX side imports nothing beyond the package's dependencies; the PyTorch twins (`torch_models`,
`torch_step`) and the official AutoAttack are imported only when `--torch` asks for them.
"""
