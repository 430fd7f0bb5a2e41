"""The one gate (`rpat_jax.cpu.enabled`): with another default backend, AutoAttack and PGD evaluation compile
with plain jax.jit and take no CPU form; on the CPU the same calls take them (so the check can fail)."""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rpat_jax import cpu
from rpat_jax.autoattack import ensemble
from rpat_jax.cpu import chunks, convs, hoisted_jit
from rpat_jax.evaluate import pgd
from rpat_jax.models import create_model

SMALL_AA = {'apgd-ce': {'n_iter': 3}, 'square': {'n_queries': 5}}
THREAT = types.SimpleNamespace(norm='linf', eps=8 / 255, step_size=2 / 255)


@pytest.fixture
def problem():
  model = create_model('small_cnn', 10, width=8)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
  logits_fn = lambda x: model.apply(variables, x, train=False)
  x = np.random.default_rng(0).uniform(size=(8, 16, 16, 3)).astype(np.float32)
  return logits_fn, x, np.asarray(jnp.argmax(logits_fn(x), -1))  # Every point clean-correct: all attacked.


@pytest.fixture
def cpu_forms(monkeypatch):
  """Counts each use of a CPU form: the convolution interceptor, the chunk measure, a hoisted program's
  signature. Every weight array is hoisted (MIN_BYTES 0), so a CPU run would hoist the tiny model too."""
  used = collections.Counter()
  for module, name in ((convs, '_fast_forms'), (chunks, '_forward_jaxpr'), (hoisted_jit, '_signature')):
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, _name=name, _original=original, **k:
                        used.update([_name]) or _original(*a, **k))
  monkeypatch.setattr(hoisted_jit, 'MIN_BYTES', 0)
  return used


def _evaluate(logits_fn, x, y):
  result = ensemble.evaluate(logits_fn, x, y, version='custom', attacks=['apgd-ce', 'square'],
                             attack_options=SMALL_AA, batch_size=8, seed=0)
  clean, pgd20, cw20 = pgd.accuracies(logits_fn, x, y, THREAT, batch_size=8, seed=0)
  return result['robust_acc'], clean, pgd20, cw20


def test_off_the_cpu_the_attacks_are_plain_jax_jit_with_no_cpu_form(monkeypatch, problem, cpu_forms):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')  # Any name but 'cpu' reads the same.
  assert not cpu.enabled()
  logits_fn, x, y = problem
  plain = type(jax.jit(lambda z: z))
  assert type(hoisted_jit.jit(logits_fn)) is plain
  assert type(hoisted_jit.jit(static_argnames=('loss',))(lambda z, loss: z)) is plain
  assert hoisted_jit.run_once_options() is None
  assert convs.for_attacks(logits_fn) is logits_fn
  assert chunks.chunk_size(logits_fn, (16, 16, 3), 1) is None
  robust, clean, pgd20, cw20 = _evaluate(logits_fn, x, y)
  assert clean == 1.0 and 0.0 <= robust <= 1.0 and pgd20 <= clean and cw20 <= clean
  assert sum(cpu_forms.values()) == 0, dict(cpu_forms)


@pytest.mark.cpu_only
def test_on_the_cpu_the_same_calls_take_every_cpu_form(problem, cpu_forms):
  assert cpu.enabled()
  _evaluate(*problem)
  assert set(cpu_forms) == {'_fast_forms', '_forward_jaxpr', '_signature'}, dict(cpu_forms)
