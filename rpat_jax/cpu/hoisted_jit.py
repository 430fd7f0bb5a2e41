"""`jit`: on a CPU, jax.jit for the attacks' programs with the arrays the function closes over (a model's
weights) passed to the executable as arguments instead of embedded in it as constants; elsewhere jax.jit.

The attacks take a `logits_fn` that closes over the weights. Under `jax.jit` those arrays become constants
of the compiled program, and XLA:CPU compiled ResNet-18's input-gradient program about twice as fast with
them as arguments (docs/benchmarks.md, CPU table). As arguments, programs of the same shapes are the same
program whatever the weights, so a persistent compilation cache can serve the next checkpoint too. Small
weights (under MIN_BYTES) stay embedded: XLA folds their transforms, and such programs compiled faster.

Each new signature (the arguments' tree, shapes, dtypes and shardings, and the static arguments) is traced
once to a jaxpr; its constants are the closed-over arrays, and the jaxpr is compiled as a function of them.
What the program computes from the weights alone (the input gradient's flipped and transposed kernels, the
phase kernels' stacks, eval-mode BatchNorm's scales) runs once per function, in a prologue, and the program
takes the prologue's outputs as arguments: embedded, XLA would fold it at compile time; as plain arguments
it would run in every call.

Hoisting rewrites jaxprs with `jax.extend.core`, tested on the jax that requirements.txt pins (TESTED_JAX),
where a failed rewrite is an error. On another jax release, one log line says so and that program is
compiled with the weights embedded: the same values, compiled more slowly, not a stopped run. Off the CPU
(`cpu.enabled()` false) `jit` is jax.jit itself. Compiled for a TPU slice and a GPU host (`python -m
rpat_jax.aot --weights_as_arguments`), the weights as arguments in the compute dtype were estimated faster
and smaller on the TPU and compiled faster for the GPU, but this module's own programs cannot be compiled
for a target from here (the prologue runs on the devices): turning it on there waits for a run on the
hardware (docs/benchmarks.md, "Before you rent one").
"""

import functools
from typing import Callable, Optional, Sequence

from absl import logging
import jax
import jax.extend
import numpy as np
from jax.extend.core import primitives
from jax.sharding import NamedSharding, PartitionSpec

from rpat_jax import cpu

# Closed-over arrays below this many bytes stay constants of the program: the quick-start CNN's 24,570
# weights compiled faster embedded, ResNet-18's 11.2M slower (docs/benchmarks.md, CPU table).
MIN_BYTES = 4 << 20

# The jax releases whose jaxprs the rewrites were tested on (requirements.txt pins one of them).
TESTED_JAX = ('0.10.2',)


def run_once_options():
  """compiler_options for a program that runs once per attack run: little optimisation on a CPU, where
  APGD's random starts compile several times faster so (docs/benchmarks.md); the default elsewhere."""
  return {'xla_backend_optimization_level': 0} if cpu.enabled() else None


def _placement(leaf):
  """What of a leaf's sharding a program depends on: the device alone when it spans one (a 1-device mesh's
  P('data') and P() are the same placement), else the sharding."""
  if not isinstance(leaf, jax.Array):
    return None
  devices = leaf.sharding.device_set
  return next(iter(devices)) if len(devices) == 1 else leaf.sharding


def _with_kernel_in_standard_layout(eqn, prologue):
  """A convolution whose kernel the prologue computes, reading it laid out [*spatial, in, out] (a transposed
  kernel is transposed there, once). The input gradient's convolutions read their kernels with input and
  output swapped, and XLA:CPU copied each into its layout in every call (ResNet-18: 38 MB)."""
  lhs_spec, rhs_spec, out_spec = eqn.params['dimension_numbers']
  spatial = len(rhs_spec) - 2
  standard = (spatial + 1, spatial) + tuple(range(spatial))
  if (tuple(rhs_spec) == standard or eqn.params['feature_group_count'] != 1
      or eqn.params['batch_group_count'] != 1):
    return eqn
  kernel = eqn.invars[1]
  permutation = tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0])
  aval = kernel.aval.update(shape=tuple(kernel.aval.shape[d] for d in permutation))
  laid_out = jax.extend.core.Var(aval)
  prologue.append(jax.extend.core.new_jaxpr_eqn([kernel], [laid_out], primitives.transpose_p,
                                                {'permutation': permutation}, frozenset()))
  numbers = jax.lax.ConvDimensionNumbers(lhs_spec, standard, out_spec)
  return eqn.replace(invars=[eqn.invars[0], laid_out], params={**eqn.params, 'dimension_numbers': numbers})


def _split(jaxpr):
  """(prologue, main): the jaxpr's operations computed from its constants alone, as a jaxpr with the same
  constants, no inputs and their outputs that `main` reads; and `main`, the rest, whose constants are the
  constants it still reads and then the prologue's outputs.

  An operation moves to the prologue when it has inputs, all from constants or the prologue, no effects,
  and an output no larger than its inputs (so a broadcast of a weight to the batch stays in the program).
  """
  known, prologue, rest = set(jaxpr.constvars), [], []
  variable = lambda atom: isinstance(atom, jax.extend.core.Var)
  nbytes = lambda atoms: sum(a.aval.size * a.aval.dtype.itemsize for a in atoms if hasattr(a.aval, 'size'))
  for eqn in jaxpr.eqns:
    inputs = [a for a in eqn.invars if variable(a)]
    if (inputs and all(a in known for a in inputs) and not eqn.effects
        and nbytes(eqn.outvars) <= nbytes(inputs)):
      prologue.append(eqn)
      known.update(eqn.outvars)
    else:
      if eqn.primitive is primitives.conv_general_dilated_p and eqn.invars[1] in known:
        eqn = _with_kernel_in_standard_layout(eqn, prologue)
      rest.append(eqn)
  read = {a for eqn in rest for a in eqn.invars if variable(a)} | {a for a in jaxpr.outvars if variable(a)}
  outputs = list(dict.fromkeys(a for eqn in prologue for a in eqn.outvars if a in read))
  constants = [a for a in jaxpr.constvars if a in read]
  return (jaxpr.replace(invars=[], outvars=outputs, eqns=prologue, effects=frozenset(),
                        debug_info=jaxpr.debug_info._replace(arg_names=(), result_paths=None)),
          jaxpr.replace(constvars=constants + outputs, eqns=rest))


def _not_hoisted(error: Exception) -> None:
  """A failed rewrite: an error on a tested jax (a bug here), else one log line (jax.extend.core's details
  may change with the release), and the program is compiled with the weights embedded."""
  if jax.__version__ in TESTED_JAX:
    raise error
  logging.warning('hoisted_jit: the weights stay embedded in this program (jax %s could not hoist them: %s: %s)',
                  jax.__version__, type(error).__name__, error)


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


def jit(fn: Callable = None, *, static_argnames: Sequence[str] = (), min_bytes: Optional[int] = None,
        prologue: bool = True, **jit_kwargs) -> Callable:
  """jax.jit(fn, static_argnames=..., **jit_kwargs), with fn's closed-over arrays as arguments when they
  hold at least min_bytes (MIN_BYTES unless given; decided at the first call; below it, plain jax.jit for
  every later signature), and what depends on them alone computed once (`prologue`; False: in every call).
  Each signature is traced once.

  Static arguments are passed by keyword. Usable as a decorator, with or without arguments. Off the CPU:
  jax.jit(fn, static_argnames=..., **jit_kwargs), as it is.
  """
  if fn is None:
    return functools.partial(jit, static_argnames=static_argnames, min_bytes=min_bytes, prologue=prologue,
                             **jit_kwargs)
  if not cpu.enabled():
    return jax.jit(fn, static_argnames=static_argnames, **jit_kwargs)
  static_argnames = tuple(static_argnames)
  min_bytes = MIN_BYTES if min_bytes is None else min_bytes
  plain = jax.jit(fn, static_argnames=static_argnames, **jit_kwargs)
  programs, hoisting, computed = {}, [], {}

  def once_outputs(once, originals, consts):
    """The prologue `once`'s outputs on consts (originals, placed), computed once per prologue and
    originals: the signatures of one function share them."""
    key = (str(once), tuple(id(c) for c in originals))
    if key not in computed:  # The originals are kept, so their ids stay theirs.
      outputs = jax.jit(lambda values: jax.core.eval_jaxpr(once, values),
                        compiler_options=run_once_options())(consts)
      computed[key] = (originals, _placed(outputs, consts))
    return computed[key][1]

  def hoisted(closed, flat):
    """(body, consts): the traced program as a function of its constants (the prologue's outputs among them)."""
    main, consts = closed.jaxpr, _placed(closed.consts, flat)
    if prologue:
      once, main = _split(closed.jaxpr)
      read = set(main.constvars)
      consts = [c for v, c in zip(closed.jaxpr.constvars, consts) if v in read] + once_outputs(
          once, closed.consts, consts)
    return (lambda consts, *leaves: jax.core.eval_jaxpr(main, consts, *leaves)), consts

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
      body, consts = None, []
      if hoisting[0]:
        try:
          body, consts = hoisted(closed, flat)
        except Exception as error:  # pylint: disable=broad-except
          _not_hoisted(error)
      if body is None:  # Compiled with the weights embedded, as plain jax.jit would (this trace, not another).
        body, consts = lambda _, *leaves: jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *leaves), []
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
