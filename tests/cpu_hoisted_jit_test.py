"""`hoisted_jit.jit`: jax.jit's results, with the closed-over arrays passed as arguments, not embedded."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from rpat_jax import models
from rpat_jax.autoattack import apgd
from rpat_jax.cpu import convs
from rpat_jax.cpu import hoisted_jit

pytestmark = pytest.mark.cpu_only


def _model(seed):
  weights = {'w': jax.random.normal(jax.random.key(seed), (64, 64)), 'b': np.full((64,), 0.5, np.float32)}
  return lambda x: jnp.tanh(x @ weights['w'] + weights['b'])


def test_same_results_as_jax_jit_with_pytrees_keywords_and_static_arguments():
  logits_fn, traces = _model(0), []

  def step(state, x, *, scale, loss):
    traces.append(loss)
    weight = 2.0 if loss == 'double' else 1.0
    value, grad = jax.value_and_grad(lambda z: jnp.sum(logits_fn(z) ** 2) * weight)(x)
    return {'value': value + state['count'], 'grad': grad * scale}
  hoisted = hoisted_jit.jit(step, static_argnames=('loss',), min_bytes=0)
  plain = jax.jit(step, static_argnames=('loss',))
  x = jax.random.uniform(jax.random.key(1), (8, 64))
  for loss in ('single', 'double', 'single'):
    got = hoisted({'count': jnp.int32(3)}, x, scale=0.5, loss=loss)
    want = plain({'count': jnp.int32(3)}, x, scale=0.5, loss=loss)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
  hoisted({'count': jnp.int32(4)}, x + 1, scale=0.25, loss='single')  # New values, same signature.
  assert traces.count('single') == 2 and traces.count('double') == 2  # One trace per signature, each side.
  hoisted({'count': jnp.int32(4)}, x[:4], scale=0.25, loss='single')  # A new shape: traced again.
  assert traces.count('single') == 3


def test_the_weights_are_arguments_not_constants_of_the_program():
  x = jnp.ones((2, 64))
  embedded = jax.jit(_model(0)).lower(x).as_text()
  hoisted = hoisted_jit.jit(_model(0), min_bytes=0).lower(x).as_text()
  assert len(embedded) > 64 * 64 * 4  # jax.jit writes the 64x64 weights into the program...
  assert len(hoisted) < 4000  # ...the hoisted program takes them as arguments.
  # Two models of the same shapes are one program: the same text, different results.
  assert hoisted_jit.jit(_model(1), min_bytes=0).lower(x).as_text() == hoisted
  outputs = [hoisted_jit.jit(_model(seed), min_bytes=0)(x) for seed in (0, 1)]
  assert not np.allclose(*outputs)
  # Below min_bytes (the 16.6 KB here) the weights stay constants, as jax.jit has them.
  small = hoisted_jit.jit(_model(0), min_bytes=64 * 65 * 4 + 1)
  np.testing.assert_allclose(small(x), jax.jit(_model(0))(x))
  assert len(small.lower(x).as_text()) > 64 * 64 * 4


def test_one_program_for_equivalent_placements_on_one_device():
  """On a 1-device mesh, P('data') and P() place an array alike: one trace, not one per spelling (a jitted
  step's outputs come back P() and feed the next call beside arrays put P('data'))."""
  traces, logits_fn = [], _model(0)

  def step(x):
    traces.append(1)
    return logits_fn(x)
  hoisted = hoisted_jit.jit(step, min_bytes=0)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  x = jnp.ones((8, 64))
  for spec in (PartitionSpec('data'), PartitionSpec()):
    np.testing.assert_allclose(hoisted(jax.device_put(x, NamedSharding(mesh, spec))), jax.jit(logits_fn)(x),
                               rtol=1e-6)
  assert len(traces) == 1


def _conv_net(seed):
  """Two convolutions with an eval-mode BatchNorm-like scale between them (a function of a weight alone)."""
  keys = jax.random.split(jax.random.key(seed))
  kernels = [jax.random.normal(keys[0], (3, 3, 4, 16)) * 0.2, jax.random.normal(keys[1], (3, 3, 16, 16)) * 0.1]
  variance = np.linspace(0.5, 1.5, 16).astype(np.float32)
  conv = lambda h, w: jax.lax.conv_general_dilated(h, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return lambda x: conv(jax.nn.relu(conv(x, kernels[0]) * jax.lax.rsqrt(variance + 1e-5)), kernels[1]).mean((1, 2))


def test_what_depends_on_the_weights_alone_is_computed_once_not_in_every_call():
  """The input gradient's flipped kernels, read with input and output swapped, and the scale's rsqrt are the
  prologue's: the program has no reverse, transpose or rsqrt; without the prologue (`prologue=False`, what
  `hoisted_jit` compiled before) it has all three."""
  logits_fn = _conv_net(0)
  gradient = lambda x: jax.grad(lambda z: jnp.sum(logits_fn(z) ** 2))(x)
  x = jax.random.uniform(jax.random.key(2), (2, 8, 8, 4))
  hoisted = hoisted_jit.jit(gradient, min_bytes=0)
  np.testing.assert_allclose(hoisted(x), jax.jit(gradient)(x), rtol=1e-5, atol=1e-7)
  operations = lambda text: set(re.findall(r'= \S+ (reverse|transpose|rsqrt)\(', text))
  assert not operations(hoisted.lower(x).compile().as_text())
  every_call = hoisted_jit.jit(gradient, min_bytes=0, prologue=False)
  np.testing.assert_allclose(every_call(x), hoisted(x), rtol=1e-5, atol=1e-7)
  assert operations(every_call.lower(x).compile().as_text()) == {'reverse', 'transpose', 'rsqrt'}
  # Another shape is another program; the prologue's outputs are shared, its results still jax.jit's.
  np.testing.assert_allclose(hoisted(x[:1]), jax.jit(gradient)(x[:1]), rtol=1e-5, atol=1e-7)


def test_a_weight_broadcast_to_the_batch_stays_in_the_program():
  """An operation whose output outgrows its inputs is computed in the program: the prologue must not turn
  a [64] weight into a [4096, 64] argument."""
  weight = jnp.linspace(0.0, 1.0, 64)
  fn = lambda x: x * jnp.broadcast_to(jnp.exp(weight), x.shape)
  x = jnp.ones((4096, 64))
  hoisted = hoisted_jit.jit(fn, min_bytes=0)
  np.testing.assert_allclose(hoisted(x), jax.jit(fn)(x), rtol=1e-6)
  arguments = jax.tree.leaves(hoisted.lower(x).args_info)
  assert sum(int(np.prod(a.shape)) for a in arguments) == x.size + weight.size  # x, and exp(weight) once.


# The fast tier checks one model of each family; the Bottleneck ResNet and the benchmark PreActResNet run in
# the slow tier.
@pytest.mark.parametrize('name', [
    pytest.param(name, marks=pytest.mark.slow) if name in ('resnet18_bottleneck', 'preact_resnet18_benchmarks')
    else name for name in models.MODEL_NAMES])
def test_every_model_as_the_attacks_run_it_gives_the_same_values_with_and_without_prologue(name):
  """Each architecture's eval-mode logits and APGD's input gradient, in `cpu.convs`' forms, with the weights
  hoisted: the values computed in every call, to float rounding (BatchNorm statistics away from 0 and 1).
  The weights as arguments in both: embedded, ResNet-18 alone takes seconds to compile. The tolerance is
  1e-3 of the largest value: in-program and folded (or prologue) BatchNorm scales round differently, and a
  gradient's terms cancel (ResNet-18: 1e-4 of its largest entry); a wrong kernel or scale is off by O(1)."""
  fields = {'depth': 10, 'widen_factor': 2} if name == 'wide_resnet' else {}
  model = models.create_model(name, 10, **fields)
  size = 64 if name == 'preact_resnet18_benchmarks' else 32
  x = jax.random.uniform(jax.random.key(1), (2, size, size, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  variables = jax.tree.map(lambda a: a * 1.1 + 0.01 if a.ndim == 1 else a, variables)
  logits_fn = convs.for_attacks(lambda z: model.apply(variables, z, train=False).astype(jnp.float32))
  gradient = lambda z: apgd.loss_and_grad(logits_fn, 'ce', jnp.array([1, 2]), None, z)
  for fn in (logits_fn, gradient):
    got, want = hoisted_jit.jit(fn, min_bytes=0)(x), hoisted_jit.jit(fn, min_bytes=0, prologue=False)(x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      if jnp.issubdtype(b.dtype, jnp.floating):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(b))))
      else:
        np.testing.assert_array_equal(a, b)


def test_a_rewrite_that_fails_is_an_error_on_a_tested_jax_else_the_weights_stay_embedded(monkeypatch, caplog):
  logits_fn = _model(2)

  def failing_split(jaxpr):
    raise AttributeError('no such field in this jax')
  monkeypatch.setattr(hoisted_jit, '_split', failing_split)
  x = jax.random.uniform(jax.random.key(3), (8, 64))
  assert jax.__version__ in hoisted_jit.TESTED_JAX  # The pinned jax: a bug in the rewrite must not hide.
  with pytest.raises(AttributeError, match='no such field'):
    hoisted_jit.jit(lambda x: logits_fn(x), min_bytes=0)(x)
  monkeypatch.setattr(hoisted_jit, 'TESTED_JAX', ())  # Another jax release.
  gradient = jax.grad(lambda z: jnp.sum(logits_fn(z) ** 2))
  hoisted = hoisted_jit.jit(gradient, min_bytes=0)
  with caplog.at_level('WARNING'):
    got = hoisted(x)
  np.testing.assert_allclose(got, jax.jit(gradient)(x), rtol=1e-6)
  assert 'weights stay embedded' in caplog.text and 'no such field in this jax' in caplog.text
  arguments = lambda jitted: len(jax.tree.leaves(jitted.lower(x).args_info))
  assert arguments(hoisted) == 1  # x alone: the weights are constants of the program.
  monkeypatch.undo()
  assert arguments(hoisted_jit.jit(gradient, min_bytes=0)) > 1
