"""A tiny network defined twice, in PyTorch and in JAX with the same weights, for cross-checks against
the official AutoAttack (`pyautoattack`). Images are 16x16x3 in [0, 1]; 10 classes.

The labels are the network's own clean predictions except for every tenth point, which gets a wrong
label, so the attacks see both clean-correct and clean-misclassified points.
"""

import jax
import jax.numpy as jnp
import numpy as np

IMAGE_SHAPE = (16, 16, 3)  # NHWC
NUM_CLASSES = 10


def make_weights(seed=0):
  """Weights as numpy arrays in PyTorch layout (OIHW convolutions, [out, in] linear)."""
  rng = np.random.default_rng(seed)

  def normal(shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  weights = {
      'conv1.weight': normal((8, 3, 3, 3), 27), 'conv1.bias': np.zeros(8, np.float32),
      'conv2.weight': normal((16, 8, 3, 3), 72), 'conv2.bias': np.full(16, 0.01, np.float32),
      'fc.weight': normal((NUM_CLASSES, 16 * 8 * 8), 16 * 64) * 0.5,
      'fc.bias': np.zeros(NUM_CLASSES, np.float32),
  }
  # Centre each class's logit over a calibration set, so that predictions spread over the classes.
  calibration = _smooth_images(512, seed + 7)
  weights['fc.bias'] = -np.asarray(jax_logits_fn(weights)(jnp.asarray(calibration))).mean(0).astype(np.float32)
  return weights


def _smooth_images(n, seed):
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 1, (n, 4, 4, 3)).astype(np.float32)
  x = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
  return np.clip(x + rng.normal(0, 0.05, x.shape).astype(np.float32), 0, 1)


def torch_model(weights):
  """conv3x3(3->8) ReLU, conv3x3 stride 2 (8->16) ReLU, flatten (C, H, W order), linear; eval mode."""
  import torch  # Test-only dependency.

  class Net(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
      self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
      self.fc = torch.nn.Linear(16 * 8 * 8, NUM_CLASSES)

    def forward(self, x):
      x = torch.relu(self.conv1(x))
      x = torch.relu(self.conv2(x))
      return self.fc(x.flatten(1))

  net = Net()
  net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  return net.eval()


def jax_logits_fn(weights):
  """The same network on NHWC inputs; float32 at the highest matmul precision."""
  w1 = jnp.asarray(weights['conv1.weight'].transpose(2, 3, 1, 0))  # OIHW -> HWIO
  w2 = jnp.asarray(weights['conv2.weight'].transpose(2, 3, 1, 0))
  b1, b2 = jnp.asarray(weights['conv1.bias']), jnp.asarray(weights['conv2.bias'])
  fc_w, fc_b = jnp.asarray(weights['fc.weight']), jnp.asarray(weights['fc.bias'])
  dims = ('NHWC', 'HWIO', 'NHWC')
  hi = jax.lax.Precision.HIGHEST

  def logits_fn(x):
    h = jax.lax.conv_general_dilated(x, w1, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims,
                                     precision=hi) + b1
    h = jax.nn.relu(h)
    h = jax.lax.conv_general_dilated(h, w2, (2, 2), ((1, 1), (1, 1)), dimension_numbers=dims,
                                     precision=hi) + b2
    h = jax.nn.relu(h)
    h = h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1)  # Flatten in PyTorch's C, H, W order.
    return jnp.dot(h, fc_w.T, precision=hi) + fc_b

  return logits_fn


def make_points(n, seed=0, weights=None):
  """n smooth random images (NHWC float32 in [0, 1]) and int labels, as numpy arrays."""
  x = _smooth_images(n, seed + 1000)
  logits = np.asarray(jax_logits_fn(weights if weights is not None else make_weights())(jnp.asarray(x)))
  y = logits.argmax(1).astype(np.int64)
  y[::10] = (y[::10] + 1) % NUM_CLASSES
  return x, y


def to_torch(x, y=None):
  """NHWC numpy -> NCHW torch tensors."""
  import torch
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  return xt if y is None else (xt, torch.from_numpy(y))


def to_nhwc(xt):
  return xt.detach().cpu().numpy().transpose(0, 2, 3, 1)
