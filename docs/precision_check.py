"""Float32 gradient error against float64, ours and PyTorch's, and the step time of both BatchNorm variances.

  python docs/precision_check.py precision   # [B]'s Bottleneck ResNet-18 at initialisation, batch 16
  python docs/precision_check.py speed       # PreActResNet-18 train step, batch 32, both variance forms

The gradient is that of the mean cross-entropy of one train-mode forward (batch statistics) with respect
to every parameter, on 16 random images in [0, 1] with random labels, at the config's initial weights
(converted to PyTorch for its side). The error is ||g32 - g64|| / ||g64|| over all parameters at once.
`two_pass` is our BatchNorm now (mean((x - mean)^2), as PyTorch); `one_pass` is Flax's default
E[x^2] - E[x]^2, which this checkout used before.
"""

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update('jax_enable_x64', True)

from rpat_jax import experiment, models  # noqa: E402
from rpat_jax.models import layers  # noqa: E402
from configs import prn18, resnet18  # noqa: E402

_TWO_PASS = layers.batch_norm


def _variance_form(form: str):
  layers.batch_norm = _TWO_PASS if form == 'two_pass' else functools.partial(_TWO_PASS, fast_variance=True)


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)])


def _relative(approx: np.ndarray, exact: np.ndarray) -> float:
  return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


def _jax_gradient(model_name: str, variables, images, labels, dtype):
  model = models.create_model(model_name, 10, dtype=dtype)
  cast = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)

  def loss(params):
    logits, _ = model.apply({'params': params, 'batch_stats': cast(variables['batch_stats'])},
                            jnp.asarray(images, dtype), train=True, mutable=['batch_stats'])
    log_probs = jax.nn.log_softmax(logits.astype(dtype))
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))

  with jax.default_matmul_precision('highest'):
    return _flat(jax.jit(jax.grad(loss))(cast(variables['params'])))


def _torch_gradient(model_name: str, variables, images, labels, dtype):
  import torch  # pylint: disable=import-outside-toplevel
  from rpat_jax import convert  # pylint: disable=import-outside-toplevel
  from rpat_jax.bench import torch_models  # pylint: disable=import-outside-toplevel
  network = torch_models.build(model_name, 10)
  state = convert.flax_to_torch(jax.device_get(variables), model_name)
  network.load_state_dict({key: torch.as_tensor(np.asarray(value)) for key, value in state.items()})
  network = network.to(dtype).train()
  x = torch.as_tensor(images.transpose(0, 3, 1, 2)).to(dtype)
  loss = torch.nn.functional.cross_entropy(network(x), torch.as_tensor(np.asarray(labels), dtype=torch.int64))
  grads = torch.autograd.grad(loss, list(network.parameters()))
  return np.concatenate([grad.detach().double().numpy().ravel() for grad in grads])


def precision(batch: int = 16, model_name: str = 'resnet18_bottleneck'):
  import torch  # pylint: disable=import-outside-toplevel
  torch.backends.cudnn.allow_tf32 = False
  setup = experiment.create(resnet18.get_config('smoke'))
  state = setup.init_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(batch, 32, 32, 3)).astype(np.float32)
  labels = jnp.asarray(rng.integers(0, 10, batch))
  row = {'model': model_name, 'batch': batch}
  for form in ('two_pass', 'one_pass'):
    _variance_form(form)
    exact = _jax_gradient(model_name, variables, images, labels, jnp.float64)
    row[f'jax_{form}'] = _relative(_jax_gradient(model_name, variables, images, labels, jnp.float32), exact)
  _variance_form('two_pass')
  exact = _torch_gradient(model_name, variables, images, labels, torch.float64)
  row['torch'] = _relative(_torch_gradient(model_name, variables, images, labels, torch.float32), exact)
  return row


def speed(batch: int = 32, steps: int = 3):
  from rpat_jax.bench import train_bench  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_enable_x64', False)
  rows = {}
  for form in ('two_pass', 'one_pass'):
    _variance_form(form)
    row, _ = train_bench.run(prn18.get_config(), batch_size=batch, dtype='float32', steps_to_time=steps, warmup=1,
                             count_flops=False)
    rows[form] = {'step_ms': row['step_ms'], 'images_per_second': row['images_per_second'],
                  'compile_seconds': row['compile_seconds']}
  return rows


if __name__ == '__main__':
  what = sys.argv[1] if len(sys.argv) > 1 else 'precision'
  print(json.dumps({'precision': precision, 'speed': speed}[what](), indent=1))
