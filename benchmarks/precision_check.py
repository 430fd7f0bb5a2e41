"""Float32 gradient error against float64, ours and PyTorch's, and the step time of both BatchNorm variances.

  python benchmarks/precision_check.py precision   # [B]'s Bottleneck ResNet-18 at initialisation, batch 16
  python benchmarks/precision_check.py speed       # PreActResNet-18 train step, batch 32, both variance forms

The gradient is that of the mean cross-entropy of one train-mode forward (batch statistics) with respect
to every parameter, on 16 random images in [0, 1] with random labels, at the config's initial weights
(converted to PyTorch for its side). The error is ||g32 - g64|| / ||g64|| over all parameters at once.
`one_pass` is Flax's E[x^2] - E[x]^2 (`model.bn_fast_variance=True`, the default); `two_pass` is
mean((x - mean)^2), as PyTorch (`model.bn_fast_variance=False`). Needs torch (requirements-test.txt);
run from the repository root with PYTHONPATH=. (or the package installed).
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update('jax_enable_x64', True)

from rpat_jax import experiment, models  # noqa: E402
from configs import prn18, resnet18  # noqa: E402

FORMS = {'one_pass': True, 'two_pass': False}  # -> model.bn_fast_variance


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)])


def _relative(approx: np.ndarray, exact: np.ndarray) -> float:
  return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


def _jax_gradient_fn(model_name: str, variables, dtype, fast_variance: bool):
  """images, labels -> the flat gradient, computed in `dtype` (one compile)."""
  model = models.create_model(model_name, 10, dtype=dtype, bn_fast_variance=fast_variance)
  cast = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)
  params, batch_stats = cast(variables['params']), cast(variables['batch_stats'])

  def loss(params, images, labels):
    logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, images.astype(dtype), train=True,
                            mutable=['batch_stats'])
    log_probs = jax.nn.log_softmax(logits.astype(dtype))
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))

  grad = jax.jit(jax.grad(loss))
  return lambda images, labels: _flat(grad(params, jnp.asarray(images), jnp.asarray(labels)))


def _torch_gradient_fn(model_name: str, variables, dtype):
  import torch  # pylint: disable=import-outside-toplevel
  from rpat_jax import convert  # pylint: disable=import-outside-toplevel
  from rpat_jax.bench import torch_models  # pylint: disable=import-outside-toplevel
  network = torch_models.build(model_name, 10)
  state = convert.flax_to_torch(jax.device_get(variables), model_name)
  network.load_state_dict({key: torch.as_tensor(np.array(value)) for key, value in state.items()})
  network = network.to(dtype).train()

  def gradient(images, labels):
    network.load_state_dict({key: torch.as_tensor(np.array(value)) for key, value in state.items()})
    x = torch.as_tensor(np.array(images.transpose(0, 3, 1, 2))).to(dtype)
    loss = torch.nn.functional.cross_entropy(network(x), torch.as_tensor(np.array(labels), dtype=torch.int64))
    grads = torch.autograd.grad(loss, list(network.parameters()))
    return np.concatenate([grad.detach().double().numpy().ravel() for grad in grads])
  return gradient


def precision(batch: int = 16, seeds: int = 5, model_name: str = 'resnet18_bottleneck'):
  """Relative float32 gradient error per data seed, ours (both variance forms) and PyTorch's."""
  import torch  # pylint: disable=import-outside-toplevel
  setup = experiment.create(resnet18.get_config('smoke'))
  state = setup.init_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  data = []
  for seed in range(seeds):
    rng = np.random.default_rng(seed)
    data.append((rng.uniform(size=(batch, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, batch)))
  row = {'model': model_name, 'batch': batch, 'seeds': seeds}
  for form, fast in FORMS.items():
    exact, approx = (_jax_gradient_fn(model_name, variables, dtype, fast) for dtype in (jnp.float64, jnp.float32))
    row[f'jax_{form}'] = [_relative(approx(*d), exact(*d)) for d in data]
  exact, approx = (_torch_gradient_fn(model_name, variables, dtype) for dtype in (torch.float64, torch.float32))
  row['torch'] = [_relative(approx(*d), exact(*d)) for d in data]
  for key in ('jax_one_pass', 'jax_two_pass', 'torch'):
    row[f'{key}_mean'] = float(np.mean(row[key]))
  return row


def speed(batch: int = 32, steps: int = 6):
  from rpat_jax.bench import train_bench  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_enable_x64', False)
  rows = {}
  for form, fast in FORMS.items():
    config = prn18.get_config()
    config.model.bn_fast_variance = fast
    row, _ = train_bench.run(config, batch_size=batch, dtype='float32', steps_to_time=steps, warmup=1,
                             count_flops=False)
    rows[form] = {'step_ms': row['step_ms'], 'images_per_second': row['images_per_second'],
                  'compile_seconds': row['compile_seconds']}
  return rows


if __name__ == '__main__':
  what = sys.argv[1] if len(sys.argv) > 1 else 'precision'
  print(json.dumps({'precision': precision, 'speed': speed}[what](), indent=1))
