"""`jit`: jax.jit for the attacks' programs, with the arrays the function closes over (a model's weights)
passed to the executable as arguments instead of embedded in it as constants.

The attacks take a `logits_fn` that closes over the weights. Under `jax.jit` those arrays become constants
of the compiled program: ResNet-18's input-gradient program carried 89 MB of HLO text and compiled in
3.1-3.3 s, against 0.1 MB and 1.4-1.7 s with the weights as arguments (`docs/hoisted_jit_cpu.py`,
docs/benchmarks.md), and every AutoAttack bucket compiles several such programs. As arguments, programs
of the same shapes are the same program whatever the weights, so a persistent compilation cache, where one
is configured, can serve the next checkpoint too. Small weights (under MIN_BYTES) stay embedded: XLA
folds their transforms, and such programs compiled faster.

Each new signature (the arguments' tree, shapes, dtypes and shardings, and the static arguments) is traced
once to a jaxpr; its constants are the closed-over arrays, and the jaxpr is compiled as a function of them.
"""

import functools
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

# Closed-over arrays below this many bytes stay constants of the program: the quick-start CNN's 24,570
# weights compiled faster embedded (0.39-0.49 s against 0.75-0.87 s per gradient program), ResNet-18's
# 11.2M slower (3.1-3.3 s against 1.4-1.7 s).
MIN_BYTES = 4 << 20


def _placement(leaf):
  """What of a leaf's sharding a program depends on: the device alone when it spans one (a 1-device mesh's
  P('data') and P() are the same placement), else the sharding."""
  if not isinstance(leaf, jax.Array):
    return None
  devices = leaf.sharding.device_set
  return next(iter(devices)) if len(devices) == 1 else leaf.sharding


def _signature(flat, tree, static):
  return tree, tuple((jax.typeof(leaf), _placement(leaf)) for leaf in flat), static


def _placed(consts, flat):
  """consts, replicated over the mesh of the first mesh-sharded argument (if any), where not already."""
  consts = [jax.device_put(c) if isinstance(c, np.ndarray) else c for c in consts]  # Once, not per call.
  sharding = next((leaf.sharding for leaf in flat
                   if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding)), None)
  if sharding is None:
    return consts
  replicated = NamedSharding(sharding.mesh, PartitionSpec())
  return [jax.device_put(c, replicated)
          if isinstance(c, jax.Array) and not c.sharding.is_equivalent_to(replicated, c.ndim) else c
          for c in consts]


def jit(fn: Callable = None, *, static_argnames: Sequence[str] = (), min_bytes: int = MIN_BYTES,
        **jit_kwargs) -> Callable:
  """jax.jit(fn, static_argnames=..., **jit_kwargs), with fn's closed-over arrays as arguments when they
  hold at least min_bytes (decided at the first call; below it, plain jax.jit for every later signature).
  Each signature is traced once.

  Static arguments are passed by keyword. Usable as a decorator, with or without arguments.
  """
  if fn is None:
    return functools.partial(jit, static_argnames=static_argnames, min_bytes=min_bytes, **jit_kwargs)
  static_argnames = tuple(static_argnames)
  plain = jax.jit(fn, static_argnames=static_argnames, **jit_kwargs)
  programs, hoisting = {}, []

  def program(args, kwargs):
    """(the jitted function of (consts, *leaves), consts, leaves, output tree) for these arguments; None
    where fn's closed-over arrays are too small to hoist and plain jax.jit runs this signature."""
    kwargs = dict(kwargs)
    static = tuple(sorted((name, kwargs.pop(name)) for name in static_argnames if name in kwargs))
    flat, tree = jax.tree.flatten((args, kwargs))
    signature = _signature(flat, tree, static)
    if signature not in programs:
      if hoisting == [False]:
        return None
      def flat_fn(*leaves):
        inner_args, inner_kwargs = jax.tree.unflatten(tree, leaves)
        return fn(*inner_args, **inner_kwargs, **dict(static))
      closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*flat)
      if not hoisting:
        hoisting.append(sum(int(getattr(c, 'nbytes', 0)) for c in closed.consts) >= min_bytes)
      if hoisting[0]:
        consts = _placed(closed.consts, flat)
        body = lambda consts, *leaves: jax.core.eval_jaxpr(closed.jaxpr, consts, *leaves)
      else:  # The trace that found the weights small, compiled with them embedded (as plain jax.jit would).
        consts = []
        body = lambda _, *leaves: jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *leaves)
      programs[signature] = (jax.jit(body, **jit_kwargs), consts, jax.tree.structure(out_shape))
    run, consts, out_tree = programs[signature]
    return run, consts, flat, out_tree

  @functools.wraps(fn)
  def call(*args, **kwargs):
    found = program(args, kwargs)
    if found is None:
      return plain(*args, **kwargs)
    run, consts, flat, out_tree = found
    return jax.tree.unflatten(out_tree, run(consts, *flat))

  def lower(*args, **kwargs):
    """The jax.stages.Lowered program that `call(*args, **kwargs)` runs."""
    found = program(args, kwargs)
    if found is None:
      return plain.lower(*args, **kwargs)
    run, consts, flat, _ = found
    return run.lower(consts, *flat)
  call.lower = lower
  return call
