"""Gradients in chunks of images on a lone CPU device (`rpat_jax.cpu.chunks`): the chunk size follows the largest
activation (light networks only), and chunks change no logit, no gradient and no AutoAttack or PGD result."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import aa_reference as ref
from rpat_jax import evaluate
from rpat_jax.autoattack import ensemble
from rpat_jax.cpu import chunks
from rpat_jax.models import create_model

pytestmark = pytest.mark.cpu_only


def test_the_chunk_holds_as_many_images_as_the_cache_holds_largest_activations():
  model = create_model('small_cnn', 10, width=16)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  logits_fn = lambda x: model.apply(variables, x, train=False)
  assert chunks.largest_activation_bytes(logits_fn, (32, 32, 3)) == 32 * 32 * 16 * 4  # The first conv's.
  assert chunks.chunk_size(logits_fn, (32, 32, 3), 1) == chunks.CACHE_BYTES // (32 * 32 * 16 * 4)
  assert chunks.chunk_size(logits_fn, (32, 32, 3), 8) is None  # A mesh keeps whole batches.
  assert chunks.chunk_size(lambda x: jnp.tile(x, (1, 1, 1, 2 ** 12)), (32, 32, 3), 1) == 1


def test_networks_heavy_for_their_activations_keep_whole_batches():
  for name, chunk in (('small_cnn', 32), ('resnet18', None), ('wide_resnet', None)):
    model = create_model(name, 10, **({'width': 16} if name == 'small_cnn' else {}))
    shapes = jax.eval_shape(lambda model=model: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                                           train=False))
    variables = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
    logits_fn = lambda x, model=model, variables=variables: model.apply(variables, x, train=False)
    assert chunks.chunk_size(logits_fn, (32, 32, 3), 1) == chunk, name
  # 2 FLOPs per multiply-add, 9 x 16 multiply-adds per output, 8 x 8 x 32 outputs per image.
  kernel = jnp.ones((3, 3, 16, 32))
  conv = lambda x: jax.lax.conv_general_dilated(jnp.tile(x, (1, 1, 1, 6))[..., :16], kernel, (1, 1), 'SAME',
                                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert chunks.flops_per_image(conv, (8, 8, 3)) == 2 * 8 * 8 * 32 * 9 * 16


def test_chunks_give_the_logits_and_gradients_of_the_whole_batch():
  logits_fn = ref.jax_logits_fn(ref.make_weights())
  x, y = ref.make_points(11)
  chunked = chunks.chunked(logits_fn, 4)  # 4 + 4 + 3 images.
  np.testing.assert_allclose(chunked(x), logits_fn(x), rtol=1e-6, atol=1e-6)
  loss = lambda fn: lambda z: jnp.sum(jax.nn.log_softmax(fn(z))[jnp.arange(len(y)), y])
  np.testing.assert_allclose(jax.grad(loss(chunked))(x), jax.grad(loss(logits_fn))(x), rtol=1e-5, atol=1e-7)
  assert chunks.chunked(logits_fn, None) is logits_fn


def test_autoattack_and_pgd_give_the_same_results_in_chunks(monkeypatch):
  logits_fn = ref.jax_logits_fn(ref.make_weights())
  x, y = ref.make_points(40)
  threat = ml_collections.ConfigDict({'norm': 'linf', 'eps': 4 / 255, 'step_size': 1 / 255})
  options = {'apgd-ce': {'n_iter': 10}, 'fab-t': {'n_iter': 10, 'n_target_classes': 2}}

  def run():
    aa = ensemble.evaluate(logits_fn, x, y, eps=4 / 255, version='custom', attacks=['apgd-ce', 'fab-t'],
                           batch_size=40, attack_options=options)
    return aa, evaluate.make_robustness(logits_fn, threat, seed=0, steps=5)(x, y, 40)

  whole, whole_pgd = run()
  per_image = chunks.largest_activation_bytes(logits_fn, x.shape[1:])
  monkeypatch.setattr(chunks, 'CACHE_BYTES', 16 * per_image)  # Chunks of 16, 16 and 8 images.
  used, plain_chunked = [], chunks.chunked
  monkeypatch.setattr(chunks, 'chunked', lambda fn, chunk: used.append(chunk) or plain_chunked(fn, chunk))
  chunked, chunked_pgd = run()
  assert set(used) == {16}  # The attacks' gradients ran in chunks of 16.
  assert 0 < whole['robust'].sum() < len(x) and 0 < whole_pgd.sum() < len(x)
  np.testing.assert_array_equal(chunked['robust'], whole['robust'])
  np.testing.assert_array_equal(chunked_pgd, whole_pgd)
  # Chunks round their sums differently: a sign step may flip where a gradient entry is near zero.
  assert np.mean(np.abs(chunked['x_adv'] - whole['x_adv']) < 1e-5) > 0.999
